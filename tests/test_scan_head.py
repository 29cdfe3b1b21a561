"""Issue 28: the ``logits`` point without the full unembedding. The torch backend reads the unembedding's
input, keeps the positions, applies the head to those rows only and stops the forward before the
unembedding; the numbers are the model's (``last`` bit for bit, means to float rounding)."""

import numpy as np
import pandas as pd
import pytest
import torch

import probekit
import probekit.hooks.backends as backends
from probekit.hooks.backends import deferred_head


@pytest.fixture
def head_switch(monkeypatch):
    def use(flag: bool) -> None:
        monkeypatch.setattr(backends, "DEFER_HEAD", flag)

    return use


def _collect(model, images, positions=("last", "image_mean")):
    return probekit.collect(model, images, "Describe the image.", points=["lm.*.resid", "logits"],
                            positions=positions, progress=False, batch_size=4)


def test_logits_at_the_kept_rows_are_the_models(llava, head_switch):
    images = probekit.tiny.fixture_images(10, 32)
    head_switch(False)
    full = _collect(llava, images)
    head_switch(True)
    kept = _collect(llava, images)
    a, b = full["logits"], kept["logits"]
    assert torch.equal(a[:, 0], b[:, 0])  # "last": the same row through the same head
    torch.testing.assert_close(b[:, 1], a[:, 1], rtol=1e-5, atol=1e-5)  # mean of logits = head of the mean
    assert torch.equal(a.topk(10, -1).indices, b.topk(10, -1).indices)
    for p in llava.resolve("lm.*.resid"):
        assert torch.equal(full[p], kept[p])


def test_the_forward_stops_before_the_unembedding(llava, head_switch):
    calls = []
    handle = llava.unembed.register_forward_hook(lambda *a: calls.append(1))
    try:
        head_switch(True)
        _collect(llava, probekit.tiny.fixture_images(4, 32))
        assert calls == []
        head_switch(False)
        _collect(llava, probekit.tiny.fixture_images(4, 32))
        assert calls  # the old path runs it over every token
    finally:
        handle.remove()


def test_the_logits_point_matches_the_models_output(llava, head_switch):
    head_switch(True)
    images = probekit.tiny.fixture_images(3, 32)
    store = _collect(llava, images, positions="last")
    inputs = llava.prepare(images, ["Describe the image."] * 3)
    with torch.inference_mode():
        out = llava.hf(**inputs).logits
    last = inputs["attention_mask"].sum(1) - 1 if llava.processor.tokenizer.padding_side == "right" else torch.full((3,), -1)
    ref = out[torch.arange(3), last]
    torch.testing.assert_close(store["logits"], ref, rtol=1e-5, atol=1e-5)


def test_soft_capped_heads_run_the_unembedding_as_the_model_does(llava, monkeypatch):
    import dataclasses

    from probekit.models.logit_output import LogitOutput

    assert deferred_head(llava, ["lm.0.resid"]) is None  # no logits recorded: nothing to defer
    assert deferred_head(llava, ["lm.0.resid", "logits"]) is not None
    real = llava.target

    def target(point, _f=None):
        t = real(point)
        return dataclasses.replace(t, post=_f) if point == "logits" else t

    # a soft-cap does not commute with a mean over tokens: such a head runs as the model runs it
    monkeypatch.setattr(llava, "target", lambda p: target(p, LogitOutput(softcap=30.0)))
    assert deferred_head(llava, ["logits"]) is None
    monkeypatch.setattr(llava, "target", lambda p: target(p, LogitOutput(scale=0.5)))  # a scale does
    assert deferred_head(llava, ["logits"]) is not None


def test_scan_table_is_the_same_with_and_without_the_unembedding(llava, head_switch):
    images = probekit.tiny.fixture_images(40, 32)
    labels = [i % 2 for i in range(40)]
    tables = {}
    for flag in (False, True):
        head_switch(flag)
        tables[flag] = probekit.scan(llava, images, labels=labels, n_boot=50, n_perm=19, progress=False).table
    a, b = tables[False], tables[True]
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    num = [c for c in a.columns if c != "perm_null" and pd.api.types.is_numeric_dtype(a[c])]
    other = [c for c in a.columns if c not in num and c != "perm_null"]
    pd.testing.assert_frame_equal(a[other], b[other])
    resid = a.source == "residual"
    pd.testing.assert_frame_equal(a.loc[resid, num], b.loc[resid, num], check_exact=True)  # untouched
    pd.testing.assert_frame_equal(a[num], b[num], check_exact=False, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.stack(a.perm_null[resid]), np.stack(b.perm_null[resid]))
    # the output rows' permutation statistics: a ridge fit on the top-k features, whose inputs moved by ~1e-7
    np.testing.assert_allclose(np.stack(a.perm_null), np.stack(b.perm_null), rtol=1e-3, atol=1e-4)
    assert (a.accuracy == b.accuracy).all() and (a.leaks == b.leaks).all()
