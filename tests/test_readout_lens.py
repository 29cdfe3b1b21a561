"""Logit lens exactness and the tuned lens beating it on held-out data."""

import pytest
import torch

import probekit
from probekit.errors import InputError, StoreError
from probekit import tiny
from probekit.readout.lens import LogitLens, TunedLens


@pytest.fixture(scope="module")
def identity_last(tiny_dir):
    """A tiny LLaVA whose last block is the identity (its attention and MLP write zeros)."""
    model = probekit.load(tiny_dir("llava"))
    hf = probekit.load(tiny_dir("llava")).hf  # a private copy we may edit
    last = hf.model.language_model.layers[-1]
    with torch.no_grad():
        last.self_attn.o_proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    return probekit.wrap(hf, model.processor)


def test_lens_at_the_last_layer_equals_the_models_logits(identity_last):
    m = identity_last
    images = tiny.fixture_images(4, 32, seed=2)
    s = probekit.collect(m, images, ["What shape?", "Count the red circles", "x", "Who took it?"],
                         points=["lm.*.resid", "logits"], positions=("last", "image_mean", "image"), progress=False)
    lens = LogitLens(m)
    L = m.n_layers
    for j, pos in enumerate(s.positions("logits")):
        if pos == "image_mean":
            continue  # a mean of residuals is not the residual of a token, so its logits are not the model's
        exact = lens.decode(s[f"lm.{L - 1}.resid"][:, j])
        assert torch.equal(exact, s["logits"][:, j].float()), pos
        # the last block is the identity, so the layer before it already gives the model's logits
        before = lens.decode(s[f"lm.{L - 2}.resid"][:, j])
        assert torch.equal(before, s["logits"][:, j].float()), pos


def test_top_k_and_target_ranks(tiny_model):
    m = tiny_model("llava")
    s = probekit.collect(m, tiny.fixture_images(6, 32), "What is the username?", points="lm.*.resid",
                         positions=("last", "image_mean"), progress=False)
    lens = LogitLens(m)
    top = lens.top_k(s, k=3)
    assert len(top) == m.n_layers * 2 * 3
    assert (top.groupby(["point", "position"])["prob"].apply(lambda p: p.is_monotonic_decreasing)).all()
    ranks = lens.target_ranks(s, ["alice_1987"])
    ids = m.processor.tokenizer("alice_1987", add_special_tokens=False)["input_ids"]
    assert len(ranks) == m.n_layers * 2 * len(ids)
    assert ((ranks.rank_median >= 1) & (ranks.rank_median <= m.unembed.weight.shape[0])).all()
    assert ((ranks.prob_lo <= ranks.prob) & (ranks.prob <= ranks.prob_hi)).all()
    # the top-1 token of the mean distribution must have rank 1 for most samples at that layer
    first = top[(top["rank"] == 1) & (top.point == "lm.1.resid") & (top.position == "last")].iloc[0]
    r = lens.target_ranks(s, [first.token], points=["lm.1.resid"])
    r = r[(r.position == "last") & (r.token_id == first.token_id)]
    if len(r):
        assert r.rank_mean.iloc[0] < 5
    with pytest.raises(InputError):
        lens.target_ranks(s, [""])


def test_tuned_lens_lowers_held_out_kl_at_every_layer(tiny_dir, tmp_path):
    m = probekit.load(tiny.build("llava", tmp_path / "m4", seed=3, num_layers=4))
    images = tiny.fixture_images(160, 32, seed=7)
    prompts = ["What shape is it?", "Count the circles", "What colour?", "Describe it"] * 40
    kw = dict(points=["lm.embed", "lm.*.resid"], positions="image", batch_size=32, progress=False)
    train = probekit.collect(m, images[:120], prompts[:120], **kw)
    held = probekit.collect(m, images[120:], prompts[120:], **kw)
    tuned = TunedLens.fit(m, train, steps=250, lr=3e-3, seed=0, progress=False)
    base = LogitLens(m).kl_to_final(held)
    after = LogitLens(m, tuned).kl_to_final(held)
    last = f"lm.{m.n_layers - 1}.resid"
    b = base.groupby("point").kl.mean()
    a = after.groupby("point").kl.mean()
    assert b[last] == pytest.approx(0, abs=1e-6) and a[last] == pytest.approx(0, abs=1e-6)
    for p in tuned.points:
        assert a[p] < b[p], f"{p}: tuned {a[p]:.4f} vs logit lens {b[p]:.4f}"
    # round trip through safetensors
    tuned.save(tmp_path / "lens.safetensors")
    loaded = TunedLens.load(tmp_path / "lens.safetensors")
    again = LogitLens(m, loaded).kl_to_final(held)
    assert torch.allclose(torch.tensor(again.kl.values), torch.tensor(after.kl.values))
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(StoreError):
        TunedLens.load(tmp_path / "bad.safetensors")
