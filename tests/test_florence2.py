"""Florence-2, the encoder-decoder: positions per token sequence, and steering on both sequences.

The coverage matrix (``tests/test_coverage_matrix.py``) checks each point against the model's
hidden states; here: both sequences in one forward, a teacher-forced (padded) decoder
sequence, ablate / steer on the encoder and the decoder (with a KV cache in ``generate``), and
the errors where something does not apply.
"""

import warnings

import pytest
import torch

import probekit
from probekit.errors import PositionError, UnsupportedModelError
from probekit.hooks.collect import _forward
from probekit.hooks.points import Point
from probekit.hooks.positions import normalize_positions
from probekit.hooks.recorder import Recorder
from probekit import tiny
from probekit.tiny import zoo
from probekit.report.order import point_order
from probekit.steering import Direction, ablate, orthogonalize, steer

PROMPTS = ["What shape is it?", "What colour is the big square on the left?"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def florence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return probekit.wrap(*zoo.build("florence2"))


@pytest.fixture(scope="module")
def inputs(florence):
    return florence.prepare(tiny.fixture_images(2, 32, seed=3), PROMPTS)


def _teacher_forced(model, inputs):
    """The inputs with decoder sequences of 3 and 5 tokens (start token first), right padded."""
    pad = model.hf.config.text_config.pad_token_id
    start = model.hf.config.text_config.decoder_start_token_id
    dec = torch.tensor([[start, 40, 41, pad, pad], [start, 50, 51, 52, 53]])
    return {**inputs, "decoder_input_ids": dec, "decoder_attention_mask": (dec != pad).long()}


def _last(am):
    return (am.long() * torch.arange(1, am.shape[1] + 1)).argmax(1)


def test_points_parse_and_sort_in_forward_order(florence):
    names = florence.points()
    assert names[:4] == ["vision.0.resid", "vision.1.resid", "projector", "encoder.embed"]
    assert [florence.point_width(p) for p in names[:2]] == [16, 32]  # each DaViT stage has its own width
    for name in names:
        parsed, full = Point.parse(name), Point.of(florence, name)
        assert (parsed.side, parsed.layer, parsed.kind, parsed.sequence) == (full.side, full.layer, full.kind, full.sequence)
    assert {Point.of(florence, p).sequence for p in florence.points("encoder.*")} == {"encoder"}
    assert {Point.of(florence, p).sequence for p in florence.points("lm.*")} == {"lm"}
    stream = [p for p in names if Point.parse(p).kind in ("resid", "embed", "projector", "logits")]
    assert point_order(reversed(stream)) == stream  # figures place the encoder between the projector and the decoder
    assert florence.layout.encoder_layers == "model.language_model.encoder.layers"
    assert florence.layout.xattn == {i: f"model.language_model.decoder.layers.{i}.encoder_attn" for i in range(3)}


def test_the_decoder_is_fed_its_start_token(florence, inputs):
    start = florence.hf.config.text_config.decoder_start_token_id
    assert inputs["decoder_input_ids"].tolist() == [[start], [start]]
    assert inputs["decoder_attention_mask"].tolist() == [[1], [1]]
    # the same logits as the model's own default decoder input
    plain = {k: v for k, v in inputs.items() if not k.startswith("decoder_")}
    with torch.no_grad():
        assert torch.equal(florence.hf(**inputs).logits, florence.hf(**plain).logits)


def test_both_sequences_in_one_collect(florence, inputs):
    images = tiny.fixture_images(2, 32, seed=3)
    store = probekit.collect(florence, images, PROMPTS, points=["encoder.1.resid", "lm.2.resid"], positions=("last", 0),
                             progress=False)
    with torch.no_grad():
        out = florence.hf(**inputs, output_hidden_states=True)
    rows = torch.arange(2)
    enc_last = _last(inputs["attention_mask"])
    assert enc_last.tolist() == [24, 33]  # 17 image tokens, <s>, then prompts of 7 and 16 tokens ending in </s>
    enc = out.encoder_hidden_states[-1]
    assert torch.equal(store["encoder.1.resid"][:, 0], enc[rows, enc_last])
    assert torch.equal(store["encoder.1.resid"][:, 1], enc[:, 0])  # token 0: the first image token
    assert torch.equal(store["lm.2.resid"][:, 0], out.decoder_hidden_states[-1][:, 0])
    assert torch.equal(store["lm.2.resid"][:, 1], out.decoder_hidden_states[-1][:, 0])  # one decoder token: last == 0
    assert store.positions("lm.2.resid") == ["last", "0"]
    assert store.point("encoder.1.resid").sequence == "encoder"
    assert store.point("lm.2.resid").sequence == "lm"


def test_decoder_positions_follow_a_teacher_forced_sequence(florence, inputs):
    forced = _teacher_forced(florence, inputs)
    pos, many = normalize_positions(("last", 1))
    out, ctxs = _forward(florence, forced, 2, ["encoder.0.resid", "lm.2.resid", "logits"], pos, many, "torch",
                         ["encoder", "lm"])
    with torch.no_grad():
        ref = florence.hf(**forced, output_hidden_states=True)
    rows = torch.arange(2)
    dec_last = _last(forced["decoder_attention_mask"])
    assert dec_last.tolist() == [2, 4]
    assert torch.equal(out["lm.2.resid"][:, 0], ref.decoder_hidden_states[-1][rows, dec_last])
    assert torch.equal(out["lm.2.resid"][:, 1], ref.decoder_hidden_states[-1][:, 1])
    assert torch.equal(out["logits"][:, 0], ref.logits[rows, dec_last])
    assert torch.equal(out["encoder.0.resid"][:, 0], ref.encoder_hidden_states[1][rows, _last(forced["attention_mask"])])
    assert set(ctxs) == {"encoder", "lm"} and not ctxs["lm"].image_mask.any()


def test_ablate_on_both_sequences_removes_the_direction(florence, inputs):
    v = torch.randn(florence.d_model, generator=torch.Generator().manual_seed(1))
    u = v / v.norm()
    points = ["encoder.0.resid", "encoder.1.resid", "lm.0.resid", "lm.2.resid"]
    with Recorder(florence, points) as plain, torch.no_grad():
        florence.hf(**inputs)
    with ablate(florence, Direction.from_vectors(v), points=["encoder.*.resid", "lm.*.resid"]), \
            Recorder(florence, points) as rec, torch.no_grad():
        florence.hf(**inputs)
    for p in points:
        assert (plain.cache[p] @ u).abs().max() > 1e-2, p  # there was something to remove
        assert (rec.cache[p] @ u).abs().max() < 1e-5, p


def test_steer_edits_the_positions_of_each_points_sequence(florence, inputs):
    v = torch.randn(florence.d_model, generator=torch.Generator().manual_seed(2))
    forced = _teacher_forced(florence, inputs)
    with torch.no_grad():
        base = florence.hf(**forced).logits
        with steer(florence, v, alpha=1.5, points="lm.2.resid", positions="last"):
            edited = florence.hf(**forced).logits
    # the last decoder block feeds lm_head directly: the logits move by lm_head(1.5 v) at the last token only
    change = edited - base
    rows = torch.arange(2)
    last = _last(forced["decoder_attention_mask"])
    torch.testing.assert_close(change[rows, last], (florence.unembed.weight @ (1.5 * v)).expand(2, -1), atol=1e-5, rtol=1e-5)
    change[rows, last] = 0
    assert change.abs().max() == 0
    # on the encoder, "image" is the image tokens of the encoder sequence
    with Recorder(florence, ["encoder.1.resid"]) as plain, torch.no_grad():
        florence.hf(**inputs)
    with steer(florence, v, alpha=1.5, points="encoder.1.resid", positions="image"), \
            Recorder(florence, ["encoder.1.resid"]) as rec, torch.no_grad():
        florence.hf(**inputs)
    diff = rec.cache["encoder.1.resid"] - plain.cache["encoder.1.resid"]
    image = florence.image_mask(inputs)
    assert image.sum().item() == 2 * 17
    torch.testing.assert_close(diff[image], (1.5 * v).expand(int(image.sum()), -1), atol=1e-6, rtol=1e-6)
    assert diff[~image].abs().max() == 0


@pytest.mark.parametrize("generated", [False, True])
def test_generate_steers_the_decoder_like_an_uncached_forward(florence, inputs, generated):
    v = torch.randn(florence.d_model, generator=torch.Generator().manual_seed(3))
    n_new = 4
    with steer(florence, v, 2.0, points="lm.*.resid", positions="last", generated=generated), torch.no_grad():
        out = florence.hf.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True)
    seq = out.sequences  # [b, 1 + n_new]: the start token, then the generated ones

    # the whole decoder sequence at once, no cache: the prompt (the start token) is edited, later tokens if generated
    def full_mask(ctx):
        m = torch.full(ctx.input_ids.shape, generated, dtype=torch.bool)
        m[:, 0] = True
        return m
    forced = {**inputs, "decoder_input_ids": seq[:, :-1], "decoder_attention_mask": torch.ones_like(seq[:, :-1])}
    with steer(florence, v, 2.0, points="lm.*.resid", positions=full_mask), torch.no_grad():
        logits = florence.hf(**forced, use_cache=False).logits
    torch.testing.assert_close(torch.stack(out.logits, 1), logits, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        plain = florence.hf(**forced, use_cache=False).logits
    assert not torch.allclose(plain, logits, atol=1e-3)  # the edit did change the logits


def test_what_does_not_apply_raises_naming_the_points(florence, inputs):
    images = tiny.fixture_images(2, 32, seed=3)
    d = Direction.from_vectors(torch.ones(florence.d_model))
    with pytest.raises(PositionError, match=r"'image'.*lm\.0\.resid.*holds no image tokens"):
        ablate(florence, d, points="lm.*.resid", positions="image")
    with pytest.raises(PositionError, match=r"'image_mean'.*lm\.2\.resid.*holds no image tokens"):
        probekit.collect(florence, images, PROMPTS, points="lm.2.resid", positions="image_mean", progress=False)
    before = {k: v.clone() for k, v in florence.hf.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match="post-LayerNorm"):
        orthogonalize(florence, d)
    assert all(torch.equal(before[k], v) for k, v in florence.hf.state_dict().items())  # refused before any edit
    # generate runs the encoder before its first forward: encoder positions cannot be chosen there
    with pytest.raises(PositionError, match=r"encoder\.0\.resid: positions on Florence-2's encoder sequence"):
        with steer(florence, d, 1.0, points="encoder.*.resid", positions="image"), torch.no_grad():
            florence.hf.generate(**inputs, max_new_tokens=2, do_sample=False)
    with pytest.raises(probekit.errors.InputError, match="chat=True"):
        florence.prepare(images, PROMPTS, chat=True)
