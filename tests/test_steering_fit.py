"""Steering's seams: Direction is a value (no model imports), LEACE through concept-erasure's
LeaceFitter, and one position-mask registry shared by recording and editing."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import probekit
from leace_reference import closed_form as _closed_form  # tests/ is on sys.path under pytest
from probekit.errors import InputError, PositionError
from probekit.hooks import positions as hp
from probekit.steering import Direction, ablate, leace_sequential
from probekit.steering import fit


# ----------------------------------------------------------------------------- layering


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import sys\n{statement}\nprint('LOADED', [m for m in {modules!r} if m in sys.modules])\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return eval(res.stdout.split("LOADED", 1)[1])


def test_importing_directions_loads_no_model_hook_or_intervention_module():
    """A Direction is a value: importing it (and its fitters) pulls in nothing that runs a model."""
    heavy = ("probekit.steering.interventions", "probekit.steering.sequential", "probekit.steering.evaluation",
             "probekit.hooks.collect", "probekit.hooks", "probekit.models.adapter")
    assert _loaded_after("import probekit.steering.directions", heavy) == []
    assert _loaded_after("from probekit.steering import Direction", heavy) == []
    # and the lower layer's position registry knows nothing of steering
    assert _loaded_after("import probekit.hooks.positions", ("probekit.steering",)) == []


# ----------------------------------------------------------------------------- LEACE


def _planted(n: int, d: int, seed: int, K: int = 2, P: int = 1):
    """A concept planted linearly (class-dependent mean shift) in correlated Gaussian features."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    shift = torch.randn(K, P, d, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    x = torch.randn(n, P, d, generator=g, dtype=torch.float64) @ A + 1.5 * shift[y]
    x = x.float().double()  # values a float32 store holds exactly: float32 and float64 fits see the same data
    return (x[:, 0] if P == 1 else x), y


def _held_out_accuracy(x_train, y_train, x_test, y_test) -> float:
    clf = LogisticRegression(max_iter=2000).fit(x_train.numpy(), y_train.numpy())
    return float(clf.score(x_test.numpy(), y_test.numpy()))


def test_leace_fitter_erases_a_planted_concept_and_matches_the_previous_closed_form():
    x, y = _planted(4000, 16, seed=0)
    xt, yt = _planted(4000, 16, seed=1)
    before = _held_out_accuracy(x, y, xt, yt)
    d = Direction.leace({"p": x.float()}, y)  # float32 in: streamed to float64 in chunks
    e = d.eraser("p")
    after = _held_out_accuracy(e(x), y, e(xt), yt)
    chance = max(float(yt.float().mean()), 1 - float(yt.float().mean()))
    print(f"held-out probe accuracy {before:.3f} -> {after:.3f} (chance {chance:.3f})")
    assert before > 0.9
    # the eraser is fitted on the training half; on fresh data a probe is within 3 points of chance
    assert abs(after - chance) <= 0.03
    # on the fitted data the class means are equal to rounding
    xe = e(x)
    assert float((xe[y == 1].mean(0) - xe[y == 0].mean(0)).abs().max()) < 1e-10
    # the same eraser as the closed form probekit derived itself before (float64 throughout)
    ref, rank = _closed_form(x, y[:, None].double())
    assert e.left.shape[1] == rank == 1
    assert float((ref(xt) - e(xt)).abs().max()) < 1e-9


def test_leace_fitter_matches_the_closed_form_per_position_and_for_several_classes():
    x, y = _planted(3000, 24, seed=2, K=4, P=2)
    d = Direction.leace({"p": x}, y)
    e = d.eraser("p")
    X, c, g = fit.rows(x, y.numpy())
    ref, rank = _closed_form(X, fit.concept(c, 4, g))
    assert e.left.shape[1] == rank == 6  # (classes - 1) per position, the redundant one-hot column dropped
    assert d.basis("p").shape == (6, 24)
    assert float((ref(X) - e(X)).abs().max()) < 1e-9
    xe = e(X).reshape(3000, 2, 24)
    for j in range(2):
        for k in range(1, 4):
            assert float((xe[y == k, j].mean(0) - xe[y == 0, j].mean(0)).abs().max()) < 1e-10


def test_leace_streams_chunks_and_offers_shrinkage(monkeypatch):
    x, y = _planted(1000, 12, seed=3)
    whole = Direction.leace({"p": x}, y).eraser("p")
    monkeypatch.setattr(fit, "CHUNK", 96)  # many Welford updates instead of one
    chunked = Direction.leace({"p": x}, y).eraser("p")
    assert float((whole(x) - chunked(x)).abs().max()) < 1e-10
    shrunk = Direction.leace({"p": x}, y, shrinkage=True)
    assert shrunk.meta["shrinkage"] is True
    xs = shrunk.eraser("p")(x)  # a shrunk covariance changes the whitening, not the guarantee
    assert float((xs[y == 1].mean(0) - xs[y == 0].mean(0)).abs().max()) < 1e-10
    assert float((xs - whole(x)).abs().max()) > 1e-8
    with pytest.raises(InputError, match="tol"):
        Direction.leace({"p": x}, y, tol=0.0)


# ----------------------------------------------------------------------------- the sequential fitter


def test_leace_sequential_is_a_free_function_and_the_value_class_has_no_model_code(tiny_dir):
    m = probekit.load(tiny_dir("llava"))
    ims, y = probekit.tiny.fixture_images(24, 32), [i % 2 for i in range(24)]
    d = leace_sequential(m, ims, y, "What colour?", points="lm.*.resid")
    again = leace_sequential(m, ims, y, "What colour?", points="lm.*.resid")
    # the deprecated Direction.leace_sequential is gone (issue 26): the value never reaches the model-running code
    assert not hasattr(Direction, "leace_sequential")
    assert d.method == again.method == "leace_sequential" and d.points == again.points == ["lm.0.resid", "lm.1.resid"]
    assert d.fit_images == again.fit_images and len(d.fit_images) == 24
    for p in d.points:
        assert torch.allclose(d.eraser(p).left, again.eraser(p).left, atol=1e-12)


# ----------------------------------------------------------------------------- positions


def _ctx():
    am = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    img = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    return hp.PositionContext(am, img, torch.zeros(2, 6, dtype=torch.long))


def test_one_registry_serves_recording_and_editing():
    from probekit.steering import interventions

    assert interventions.position_mask is hp.position_mask  # one implementation, re-exported
    ctx = _ctx()
    h = torch.arange(12.0).view(2, 6, 1)
    for name in ("last", "image", 1, slice(0, 2)):  # what select reads is exactly what an edit would touch
        m = hp.position_mask(ctx, [name])
        assert torch.equal(hp.select(h, name, ctx).reshape(2, -1), h[m].reshape(2, -1))
    assert hp.position_mask(ctx, ["text"]).sum(1).tolist() == [3, 4]  # rows may differ when editing
    assert hp.position_mask(ctx, ["last", 0]).sum(1).tolist() == [2, 2]
    assert "image_mean" not in hp.editable_names() and set(hp.editable_names()) >= {"last", "image", "text"}
    with pytest.raises(PositionError, match="a mean is not a position"):
        hp.edit_positions("image_mean")
    with pytest.raises(PositionError, match="unknown position name"):
        hp.normalize_positions("nowhere")
    # a registered name works for both at once
    hp.register_position("before_image", lambda c: c.attention_mask & (c.image_mask.cumsum(1) == 0), "tokens")
    try:
        assert hp.normalize_positions("before_image")[0] == ["before_image"]
        assert hp.edit_positions(["before_image"]) == ["before_image"]
        assert hp.position_mask(ctx, ["before_image"]).tolist() == [[False, True] + [False] * 4,
                                                                   [True] + [False] * 5]
        assert hp.select(h, "before_image", ctx).flatten().tolist() == [1.0, 6.0]
        with pytest.raises(PositionError, match="different number"):  # 2 tokens before the image, and 1
            hp.select(h, "before_image", hp.PositionContext(ctx.attention_mask, torch.tensor(
                [[0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool), ctx.input_ids))
        with pytest.raises(InputError):
            hp.register_position("before_image", lambda c: c.image_mask)
    finally:
        del hp.NAMED_POSITIONS["before_image"]


def test_ablate_edits_a_registered_position(tiny_dir):
    m = probekit.load(tiny_dir("llava"))
    inputs = m.prepare(probekit.tiny.fixture_images(2, 32), ["What colour?", "What?"])
    u = torch.nn.functional.normalize(torch.randn(m.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    hp.register_position("first_text", lambda c: (c.attention_mask & ~c.image_mask).cumsum(1) == 1, "one")
    try:
        from probekit.hooks import Recorder

        with ablate(m, Direction.from_vectors(u), points="lm.0.resid", positions="first_text"), \
                Recorder(m, ["lm.0.resid"]) as rec, torch.no_grad():
            m.hf(**inputs)
        with Recorder(m, ["lm.0.resid"]) as clean, torch.no_grad():
            m.hf(**inputs)
        ctx = hp.PositionContext.from_inputs(inputs, m.image_mask(inputs))
        sel = hp.position_mask(ctx, ["first_text"])
        assert sel.sum(1).tolist() == [1, 1]
        h, h0 = rec.cache["lm.0.resid"], clean.cache["lm.0.resid"]
        assert float((h[sel] @ u).abs().max()) < 1e-5 and float((h0[sel] @ u).abs().max()) > 1e-3
        assert torch.equal(h[~sel], h0[~sel])
        # and collect records it, one row per sample
        store = probekit.collect(m, probekit.tiny.fixture_images(2, 32), "What colour?", points="lm.0.resid",
                                 positions="first_text", progress=False)
        assert tuple(store["lm.0.resid"].shape) == (2, m.d_model)
    finally:
        del hp.NAMED_POSITIONS["first_text"]


def test_steering_coerces_through_one_helper():
    from probekit.steering.inputs import _coerce

    assert _coerce(np.ones((3, 2), dtype=np.float32), "x").dtype == torch.float64
    assert _coerce(torch.ones(3, 2, dtype=torch.bfloat16), "x", dtype=None).dtype == torch.bfloat16
    with pytest.raises(InputError, match="acts at 'p' contains NaN"):
        _coerce(torch.tensor([[float("nan")]]), "acts at 'p'")
    with pytest.raises(InputError, match="activations at 'p'"):
        Direction.from_means({"p": torch.ones(4, dtype=torch.long)}, [0, 1, 0, 1])
    with pytest.raises(InputError, match="steering vector"):
        from probekit.steering.interventions import steer

        steer(None, torch.full((3,), float("inf")), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Direction.from_vectors(torch.tensor([3, 4])).vector("*").tolist() == [0.6, 0.8]  # ints are fine
