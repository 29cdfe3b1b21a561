"""The coverage matrix: every architecture probekit supports, checked end to end on a tiny build.

One row per ``config.model_type`` in :data:`probekit.models.coverage.COVERED` that the running
transformers has (:func:`probekit.models.coverage.covered`: an architecture newer than it, named
in :data:`probekit.models.coverage.SINCE`, is left out); each check is a test of its own, so a
failure names the architecture and the check. The table in ``docs/real-models.md`` is generated
from the same lists (``test_docs_table_is_current``).

An encoder-decoder (Florence-2) has two token sequences: the encoder's (image tokens and
prompt, points ``encoder.*``) and the decoder's (points ``lm.*``). Each check runs on the
sequence it is about; where one does not apply (:data:`probekit.models.coverage.NOT_APPLICABLE`)
the test asserts what holds instead.
"""

import warnings

import pytest
import torch

import probekit
from probekit.errors import InputError, PositionError
from probekit import tiny
from probekit.models import coverage
from probekit.readout.lens import LogitLens
from probekit.tiny import zoo

ARCHS = list(coverage.covered())
PROMPTS = ["What shape is it?", "What colour is the big square on the left?"]


@pytest.fixture(scope="module")
def built(one_thread):
    cache: dict[str, probekit.Model] = {}

    def get(arch: str) -> probekit.Model:
        if arch not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[arch] = probekit.wrap(*zoo.build(arch))
        return cache[arch]

    return get


def _forward(model: probekit.Model, n: int = 2, seed: int = 3):
    images = tiny.fixture_images(n, 32, seed=seed)
    inputs = model.prepare(images, PROMPTS[:n])
    with torch.no_grad():
        out = model.hf(**inputs, output_hidden_states=True)
    # BLIP-2 and InstructBLIP keep the language model's outputs one level down
    mine = getattr(out, "hidden_states", None) is not None or getattr(out, "decoder_hidden_states", None) is not None
    lm_out = out if mine else out.language_model_outputs
    return images, inputs, lm_out


def _encoder_decoder(model: probekit.Model) -> bool:
    return bool(getattr(model.hf.config, "is_encoder_decoder", False))


def _last(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token."""
    return (attention_mask.long() * torch.arange(1, attention_mask.shape[1] + 1)).argmax(1)


def _decoder_mask(inputs: dict) -> torch.Tensor:
    return inputs.get("decoder_attention_mask", torch.ones_like(inputs["decoder_input_ids"]))


def _streams(model: probekit.Model, inputs: dict, out) -> list[tuple[str, tuple, torch.Tensor, torch.Tensor | None, bool]]:
    """Each token sequence as (point prefix, HF hidden states, attention mask, image mask or None, ends in a final norm).

    A decoder-only model has one, whose last hidden state HF reports after the final norm; an
    encoder-decoder's BART encoder and decoder have no final norm and the decoder no image tokens.
    """
    if _encoder_decoder(model):
        return [("encoder", out.encoder_hidden_states, inputs["attention_mask"], model.image_mask(inputs), False),
                ("lm", out.decoder_hidden_states, _decoder_mask(inputs), None, False)]
    return [("lm", out.hidden_states, inputs["attention_mask"], model.image_mask(inputs), True)]


def _image_hidden(out):
    """The hidden states of the sequence the image features go into (an encoder-decoder's: the encoder's)."""
    return out.encoder_hidden_states if getattr(out, "encoder_hidden_states", None) is not None else out.hidden_states


def test_matrix_lists_every_installed_architecture():
    """Each image-text-to-text architecture of the installed transformers is covered, unsupported or untested, once."""
    installed = coverage.installed_architectures()
    for arch in list(coverage.COVERED) + list(coverage.UNSUPPORTED):
        if arch not in coverage.OUTSIDE_MAPPING:  # installed, or named in SINCE with a release newer than this one
            assert (arch in installed) is not coverage.newer_than_installed(arch), arch
    assert set(coverage.SINCE) <= set(coverage.COVERED) | set(coverage.UNSUPPORTED)
    assert not set(coverage.COVERED) & set(coverage.UNSUPPORTED)
    assert set(zoo.ARCHITECTURES) == set(coverage.COVERED)
    assert set(ARCHS) == set(coverage.COVERED) & set(installed)
    rows = coverage.rows()
    unsupported = {a for a in coverage.UNSUPPORTED if not coverage.newer_than_installed(a)}
    assert sorted(r.model_type for r in rows) == sorted(set(installed) | unsupported)
    assert {r.model_type for r in rows if r.status == "works"} == set(ARCHS)
    for arch in set(coverage.COVERED) - set(ARCHS):  # its builder is not reached: it says which release it needs
        with pytest.raises(InputError, match=f"needs transformers>={coverage.SINCE[arch]}"):
            zoo.build(arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_wrap_maps_every_block(built, arch, tmp_path):
    model = built(arch)
    assert type(model.hf).__name__ == coverage.installed_architectures().get(arch, type(model.hf).__name__)
    assert model.family == coverage.COVERED[arch]
    assert model.layout.missing == []
    n_lm = model.n_layers
    assert model.points("lm.*.resid") == [f"lm.{i}.resid" for i in range(n_lm)]
    assert n_lm == coverage.text_layers(model.hf.config)
    n_enc = coverage.encoder_layers(model.hf.config)
    assert model.points("encoder.*.resid") == [f"encoder.{i}.resid" for i in range(n_enc)] if n_enc else \
        not any(p.startswith("encoder.") for p in model.points())
    assert (n_enc > 0) == _encoder_decoder(model)
    vision = model.points("vision.*.resid")
    assert len(vision) == coverage.vision_layers(model.hf.config)
    if "lm.norm" in coverage.NOT_APPLICABLE.get(arch, {}):
        assert "lm.norm" not in model.points() and model.final_norm is None
        assert {"projector", "lm.embed", "logits"} <= set(model.points())
    else:
        assert {"projector", "lm.embed", "lm.norm", "logits"} <= set(model.points())
    assert model.d_model == coverage.text_width(model.hf.config)
    # the checkpoint round-trips: save_pretrained, then probekit.load gives the same map, inputs and logits
    model.hf.save_pretrained(tmp_path / "ckpt")
    model.processor.save_pretrained(tmp_path / "ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = probekit.load(tmp_path / "ckpt")
    assert again.family == model.family and again.points() == model.points()
    _, inputs, _ = _forward(model)
    _, inputs_again, _ = _forward(again)
    assert inputs.keys() == inputs_again.keys()
    for k, v in inputs.items():
        assert torch.equal(v, inputs_again[k]), k
    with torch.no_grad():
        assert torch.equal(again.hf(**inputs).logits, model.hf(**inputs).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_resid_equals_hf_hidden_states(built, arch):
    model = built(arch)
    images, inputs, out = _forward(model)
    rows = torch.arange(2)
    streams = _streams(model, inputs, out)
    assert len(streams[-1][1]) == model.n_layers + 1
    for prefix, hs, attention_mask, image_mask, normed in streams:
        n = len(hs) - 1
        assert model.points(f"{prefix}.*.resid") == [f"{prefix}.{i}.resid" for i in range(n)]
        positions = ("last", "image") if image_mask is not None else ("last",)
        points = [f"{prefix}.embed", f"{prefix}.*.resid"] + (["lm.norm"] if normed else [])
        store = probekit.collect(model, images, PROMPTS, points=points, positions=positions, batch_size=2, progress=False)
        last = _last(attention_mask)
        if image_mask is not None:
            image_mask = image_mask & attention_mask.bool()
            image_idx = image_mask.nonzero()[:, 1].view(2, int(image_mask[0].sum()))
        # where the blocks end in a final norm, HF's last hidden state is after it (checked as lm.norm)
        for i in range(n - 1 if normed else n):
            got = store[f"{prefix}.{i}.resid"]
            assert torch.equal(got[:, 0], hs[i + 1][rows, last]), f"{prefix}.{i}.resid at last"
            if image_mask is not None:
                assert torch.equal(got[:, 1:], hs[i + 1][rows[:, None], image_idx]), f"{prefix}.{i}.resid at image"
        assert torch.equal(store[f"{prefix}.embed"][:, 0], hs[0][rows, last])
        if image_mask is not None:
            assert torch.equal(store[f"{prefix}.embed"][:, 1:], hs[0][rows[:, None], image_idx])
        if normed:
            assert torch.equal(store["lm.norm"][:, 0], hs[-1][rows, last])
        else:
            assert f"{prefix}.norm" not in model.points()
    if "image positions on lm.*" in coverage.NOT_APPLICABLE.get(arch, {}):
        with pytest.raises(PositionError, match="holds no image tokens"):
            probekit.collect(model, images, PROMPTS, points="lm.0.resid", positions=("last", "image"), progress=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_image_positions_are_where_the_image_goes_in(built, arch):
    """Image positions are exactly the tokens whose input embedding changes with the image."""
    model = built(arch)
    _, inputs, out = _forward(model)
    _, inputs_b, out_b = _forward(model, seed=4)
    assert torch.equal(inputs["input_ids"], inputs_b["input_ids"])
    mask = model.image_mask(inputs)
    assert mask.sum(1).tolist()[0] > 0 and mask.sum(1)[0] == mask.sum(1)[1]
    if _encoder_decoder(model):  # the decoder's input embeddings do not depend on the image at all
        assert torch.equal(out.decoder_hidden_states[0], out_b.decoder_hidden_states[0])
    hs0, hs0_b = _image_hidden(out)[0], _image_hidden(out_b)[0]
    changed = (hs0 != hs0_b).any(-1) & inputs["attention_mask"].bool()
    if model.family == "mllama":  # the image enters through cross-attention; <|image|> stays a text token
        assert not changed.any() and mask.sum(1).tolist() == [1, 1]
        return
    assert not (changed & ~mask).any(), "a text position changed with the image"
    # every image position carries image features, except LLaVA-NeXT's (OneVision's, -Video's) row separators
    # (image_newline, one constant vector per row of patches): they are image tokens that no image changes
    unchanged = (mask & ~changed).sum(1)
    newline = getattr(getattr(model.hf, "model", None), "image_newline", None)
    if newline is not None:
        assert torch.equal(hs0[mask & ~changed], newline.expand(int(unchanged.sum()), -1).to(hs0.dtype))
    else:
        assert unchanged.tolist() == [0, 0]


@pytest.mark.parametrize("arch", ARCHS)
def test_vision_points_split_per_image(built, arch):
    """A sample's vision-side rows are the same in a batch of two as alone (no mixing across images)."""
    model = built(arch)
    images = tiny.fixture_images(2, 32, seed=3)
    points = ["vision.*.resid", "projector"] + model.points("qformer.*") if "qformer.0.xattn" in model.points() else \
        ["vision.*.resid", "projector"]
    pair = probekit.collect(model, images, PROMPTS, points=points, positions="image_mean", batch_size=2, progress=False)
    alone = probekit.collect(model, images[1:], PROMPTS[1:], points=points, positions="image_mean", progress=False)
    for p in pair.points:
        assert pair[p].shape[0] == 2
        torch.testing.assert_close(pair[p][1:], alone[p], atol=1e-5, rtol=1e-4, msg=p)
        assert not torch.allclose(pair[p][0], pair[p][1]), p  # two different images give two different rows


# towers that run the batch's patches as one flattened sequence, split by the processor's image_grid_thw
GRID_TOWERS = [a for a in ARCHS if a in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe",
                                         "glm46v", "llava_onevision1_5", "ovis2_5")]


@pytest.mark.parametrize("arch", GRID_TOWERS)
def test_vision_points_split_images_of_different_sizes(built, arch):
    """A square and a wide image in one batch: each one's vision-side rows are the same as alone."""
    model = built(arch)
    images = [tiny.fixture_images(1, 32, seed=3)[0], tiny.fixture_images(1, (64, 32), seed=4)[0]]
    grid = model.prepare(images, PROMPTS)["image_grid_thw"]
    assert grid[0].prod() != grid[1].prod()  # two patch counts: an even split of the rows would mix the images
    points = ["vision.*.resid", "projector"]
    pair = probekit.collect(model, images, PROMPTS, points=points, positions="image_mean", batch_size=2, progress=False)
    for i in range(2):
        alone = probekit.collect(model, images[i:i + 1], PROMPTS[i:i + 1], points=points, positions="image_mean",
                                 progress=False)
        for p in pair.points:
            torch.testing.assert_close(pair[p][i:i + 1], alone[p], atol=1e-5, rtol=1e-4, msg=f"{p}, image {i}")


@pytest.mark.parametrize("arch", ARCHS)
def test_logit_lens_on_last_block_is_the_model_output(built, arch):
    model = built(arch)
    images, inputs, out = _forward(model)
    store = probekit.collect(model, images, PROMPTS, points=[f"lm.{model.n_layers - 1}.resid", "logits"],
                             positions="last", progress=False)
    # the logits' sequence: the decoder's for an encoder-decoder ("last" is its last token)
    last = _last(_decoder_mask(inputs) if _encoder_decoder(model) else inputs["attention_mask"])
    with torch.no_grad():
        logits = model.hf(**inputs).logits[torch.arange(2), last].float()
    lens = LogitLens(model)
    torch.testing.assert_close(lens.decode(store[f"lm.{model.n_layers - 1}.resid"]), logits, atol=1e-4, rtol=1e-4)
    # the logits point holds what the model returns (its output map after lm_head included)
    torch.testing.assert_close(store["logits"].float(), logits, atol=1e-5, rtol=1e-5)
    table = lens.top_k(store, k=3)
    assert table["token_id"].iloc[0] == int(logits.softmax(-1).mean(0).argmax())


@pytest.mark.parametrize("arch", ARCHS)
def test_store_saves_and_loads(built, arch, tmp_path):
    model = built(arch)
    images = tiny.fixture_images(2, 32, seed=3)
    positions = ("last", "image_mean")
    if "image positions on lm.*" in coverage.NOT_APPLICABLE.get(arch, {}):
        with pytest.raises(PositionError, match="holds no image tokens"):  # lm.* are on the decoder sequence
            probekit.collect(model, images, PROMPTS, points="*", positions=positions, progress=False)
        positions = ("last", "text_mean")  # every point at once; vision points still pool their image
    mem = probekit.collect(model, images, PROMPTS, points="*", positions=positions, progress=False)
    disk = probekit.collect(model, images, PROMPTS, points="*", positions=positions, progress=False,
                            store=tmp_path / "acts")
    again = probekit.ActivationStore.open(tmp_path / "acts")
    saved = probekit.ActivationStore.open(mem.save(tmp_path / "saved").directory)
    assert again.points == mem.points == saved.points == model.points()
    for p in mem.points:
        assert torch.equal(again[p], mem[p]) and torch.equal(saved[p], mem[p]), p
        assert again.positions(p) == mem.positions(p)
        assert torch.isfinite(mem[p].float()).all(), p
    assert disk.points == mem.points


@pytest.mark.parametrize("arch", ARCHS)
def test_store_layout_is_the_store(built, arch):
    """store_layout, worked out without a forward, gives every stored point's shape, dtype and bytes."""
    model = built(arch)
    images = tiny.fixture_images(2, 32, seed=3)
    positions = ("last", "text_mean") if "image positions on lm.*" in coverage.NOT_APPLICABLE.get(arch, {}) \
        else ("last", "image_mean")
    points = [p for p in model.points() if model.point_width(p) is not None]
    store = probekit.collect(model, images, PROMPTS, points=points, positions=positions, progress=False,
                             logits_topk=5)
    plan = probekit.store_layout(model, 2, points, positions, inputs=model.prepare(images, PROMPTS), logits_topk=5)
    assert plan.table["point"].tolist() == store.points
    for row in plan.table.itertuples():
        t = store[row.point]
        assert row.shape == list(t.shape[1:]) and row.dtype == str(t.dtype).replace("torch.", ""), row.point
    assert plan.store_bytes == sum(store[p].numel() * store[p].element_size() for p in store.points)


def test_docs_table_is_current():
    """docs/real-models.md carries the covered and unsupported rows this matrix checks, with their counts.

    The header names the transformers release the table was generated with and its untested architectures:
    those change with every release, so they are regenerated (``python -m probekit.models.coverage``), not
    asserted here: a test must not fail because a newer transformers came out.
    """
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "real-models.md").read_text()
    block = doc.split(coverage.START, 1)[1].split(coverage.END, 1)[0]
    assert "\n" + coverage.checked_rows() in block, "run: python -m probekit.models.coverage docs/real-models.md"
    head = re.search(r"generated with transformers (\d+\.\d+\.\d+\S*)\): \*\*(\d+) work\*\*, (\d+) unsupported", block)
    assert head and int(head[2]) == len(coverage.COVERED) and int(head[3]) == len(coverage.UNSUPPORTED)
    # every page that counts the architectures says the same number
    for page in ("README.md", "docs/index.md"):
        said = re.findall(r"(\d+) architectures checked", (root / page).read_text())
        assert said == [str(len(coverage.COVERED))], page
