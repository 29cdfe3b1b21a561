"""Ctrl-C in the middle of a forward pass: a real SIGINT, sent to this process while a batch is inside
the language model, during ``collect``, ``scan``, ``evaluate`` (with hooks and with a weight edit
active) and a study. Afterwards no hook is left on any module, every weight is as it was, and the
store (or the study's cache) resumes to exactly what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers.models.llama.modeling_llama as modeling_llama

import probekit
from probekit.hooks import live_hooks
from probekit import tiny
from probekit.steering import Direction, ablate, evaluate, orthogonalize, weights

from _stores import count_prepare  # tests/ is on sys.path

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = modeling_llama.LlamaDecoderLayer


@pytest.fixture(scope="module")
def model(tiny_dir):
    """A private, warmed-up tiny LLaVA (2 decoder layers: 2 layer calls per forward)."""
    m = probekit.load(tiny_dir("llava"))
    with torch.no_grad():
        m.hf(**m.prepare(tiny.fixture_images(1, 32), ["warm up"]))
    return m


def snapshot(m) -> dict:
    return {"hooks": {n: (tuple(x._forward_hooks), tuple(x._forward_pre_hooks), tuple(x._forward_hooks_with_kwargs),
                          tuple(x._forward_pre_hooks_with_kwargs)) for n, x in m.hf.named_modules()},
            "weights": {k: v.detach().clone() for k, v in m.hf.state_dict().items()},
            "params": {k: id(v) for k, v in m.hf.named_parameters(remove_duplicate=False)}}


def assert_untouched(m, before: dict) -> None:
    after = snapshot(m)
    leaked = [n for n in before["hooks"] if before["hooks"][n] != after["hooks"][n]]
    assert not leaked, f"hooks left on {leaked[:5]}"
    assert live_hooks(m) == [] and not weights._EDITS.get(m.hf)
    changed = [k for k, v in before["weights"].items() if not torch.equal(v, after["weights"][k])]
    assert not changed, f"weights changed: {changed[:4]}"
    assert before["params"] == after["params"]


def sigint_inside_the_model(monkeypatch, when) -> dict:
    """Send SIGINT to this process from inside a decoder layer's forward, on the first call where
    ``when(calls)`` is true; the KeyboardInterrupt is raised there, mid-forward."""
    calls = {"n": 0, "sent": None}
    real = LAYER.forward

    def forward(self, *a, **k):
        calls["n"] += 1
        if calls["sent"] is None and when(calls["n"]):
            calls["sent"] = calls["n"]
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(LAYER, "forward", forward)
    return calls


def images(n=6):
    return tiny.fixture_images(n, 32, seed=7)


# ----------------------------------------------------------------------------- collect
@pytest.mark.parametrize("backend", ["torch", "nnsight", "transformer_lens"])
def test_sigint_mid_collect_then_resume(model, tmp_path, monkeypatch, backend):
    kw = dict(points=["lm.0.resid", "lm.1.resid", "logits"], positions=("last", "image_mean"), batch_size=2,
              shard_size=2, backend=backend, progress=False)
    before = snapshot(model)
    ref = probekit.collect(model, images(), "What colour?", **kw)
    calls = sigint_inside_the_model(monkeypatch, lambda n: n == 5)  # batch 3's first layer: shards 0, 1 are done
    with pytest.raises(KeyboardInterrupt):
        probekit.collect(model, images(), "What colour?", store=tmp_path / "s", **kw)
    assert calls["sent"] == 5 and calls["n"] == 5  # the forward never got past the layer it was in
    monkeypatch.undo()
    assert_untouched(model, before)
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 2), (2, 4)] and not index["complete"]
    forwards = count_prepare(model, monkeypatch)
    again = probekit.collect(model, images(), "What colour?", store=tmp_path / "s", **kw)
    assert forwards["n"] == 1  # only the interrupted shard
    for p in ref.points:
        assert torch.equal(again[p], ref[p]), p
    assert sorted(f.name for f in (tmp_path / "s").iterdir()) == [
        "index.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    assert_untouched(model, before)


# ----------------------------------------------------------------------------- scan
def test_sigint_mid_scan_then_resume(model, tmp_path, monkeypatch):
    ims, labels = tiny.fixture_images(12, 32, seed=11), [i % 2 for i in range(12)]
    kw = dict(points="lm.*.resid", positions=("last", "image_mean"), cv=3, n_boot=20, topk=5, batch_size=4,
              targets=["red"], progress=False)
    before = snapshot(model)
    ref = probekit.scan(model, ims, labels, "What shape is it?", **kw)
    calls = sigint_inside_the_model(monkeypatch, lambda n: n == 3)  # inside the 2nd batch of the collect
    with pytest.raises(KeyboardInterrupt):
        probekit.scan(model, ims, labels, "What shape is it?", store=str(tmp_path / "s"), **kw)
    assert calls["sent"] == 3
    monkeypatch.undo()
    assert_untouched(model, before)
    # scan's one shard of 1024 rows was not finished: the fresh store is discarded, nothing half-written
    assert not (tmp_path / "s").exists()
    forwards = count_prepare(model, monkeypatch)
    again = probekit.scan(model, ims, labels, "What shape is it?", store=str(tmp_path / "s"), **kw)
    assert forwards["n"] == 3
    for t in ("table", "lens", "targets"):
        pd.testing.assert_frame_equal(getattr(again, t), getattr(ref, t), check_exact=True)
    assert_untouched(model, before)


# ----------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def colour_sets():
    from probekit.data.synthetic import make_task

    s = make_task(48, size=32, seed=0, kinds=("colour",))
    return [x.image for x in s], [x.answer for x in s]


@pytest.mark.parametrize("kind", ["ablate", "orthogonalize"])
def test_sigint_mid_evaluate_leaves_the_model_as_it_was(model, monkeypatch, colour_sets, kind):
    ims, y = colour_sets
    d = Direction.from_vectors(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)))
    make = (lambda: ablate(model, d, points="lm.*.resid")) if kind == "ablate" else (lambda: orthogonalize(model, d))
    kw = dict(prompts="What colour?", points="lm.*.resid", positions="last", n_boot=50, cv=3, direction=d,
              allow_overlap=True)
    before = snapshot(model)
    ref = evaluate(model, make, ims, y, **kw)
    assert_untouched(model, before)  # an uninterrupted evaluate leaves the model as it was (it used to keep an edit)

    def active(n):  # the first layer call while the intervention is on the model
        return bool(weights._EDITS.get(model.hf)) if kind == "orthogonalize" else "Intervention" in live_hooks(model)

    calls = sigint_inside_the_model(monkeypatch, active)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, make, ims, y, **kw)
    assert calls["sent"] is not None
    monkeypatch.undo()
    assert_untouched(model, before)
    again = evaluate(model, make, ims, y, **kw)
    pd.testing.assert_frame_equal(again.table, ref.table, check_exact=True)
    assert_untouched(model, before)


# ----------------------------------------------------------------------------- a study
def test_sigint_mid_study_leaves_a_resumable_cache(tmp_path, monkeypatch):
    """The unlearning study, interrupted while fine-tuning, then after its fine-tune is cached:
    nothing half-written; the cache it left is checked and reused by the next run."""
    from probekit.studies.unlearning import study as U
    from probekit.files import check_manifest
    from probekit.studies.unlearning import profiles as P

    cfg = U.StudyConfig.small(out=str(tmp_path / "o"), steps=3, n_profiles=8, n_unseen=8, probe_cv=2, n_boot=20,
                              n_eval_retain=4)
    out = Path(cfg.out)
    calls = sigint_inside_the_model(monkeypatch, lambda n: n == 4)  # the fine-tune's 2nd step
    with pytest.raises(KeyboardInterrupt):
        U.run_study(cfg)
    assert calls["sent"] == 4
    # the base checkpoint was finished (and is checked); no fine-tune and nothing temporary is left
    (base,) = [p for p in out.iterdir()]
    assert base.name.startswith("tiny-llava-facts") and check_manifest(base, "base", "x") is not None
    monkeypatch.undo()

    trained = {"n": 0}
    real_train = P.train

    def train(*a, **k):
        trained["n"] += 1
        return real_train(*a, **k)

    monkeypatch.setattr(P, "train", train)
    n_train = 2 * cfg.steps
    calls = sigint_inside_the_model(monkeypatch, lambda n: n == n_train + 3)  # after the fine-tune, measuring
    with pytest.raises(KeyboardInterrupt):
        U.run_study(cfg)
    assert trained["n"] == 1 and calls["sent"] == n_train + 3
    tuned = [p for p in out.iterdir() if p.name.startswith("tuned-")]
    assert len(tuned) == 1 and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert check_manifest(tuned[0], "fine-tune", "x") is not None
    cached, losses = U._cached(tuned[0])
    assert len(losses) == cfg.steps
    state = {k: v.clone() for k, v in cached.hf.state_dict().items()}
    monkeypatch.undo()

    monkeypatch.setattr(P, "train", lambda *a, **k: pytest.fail("the cached fine-tune must be reused"))
    calls = sigint_inside_the_model(monkeypatch, lambda n: n == 1)  # resumed: straight to measuring
    with pytest.raises(KeyboardInterrupt):
        U.run_study(cfg)
    assert calls["sent"] == 1
    again, _ = U._cached(tuned[0])
    assert all(torch.equal(v, state[k]) for k, v in again.hf.state_dict().items())
