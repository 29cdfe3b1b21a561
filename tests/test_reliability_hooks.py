"""No hook, attribute or weight edit outlives an exception in any public context manager.

Fault injection at every stage: in the ``with`` body, inside a forward hook, in ``model.prepare``,
in the middle of a collect (KeyboardInterrupt), halfway through registering hooks, inside the
nnsight and TransformerLens traces, and in the steering interventions (``ablate``, ``steer``,
``orthogonalize``). After each, every module's forward / pre-forward / backward hook dicts, the
global hook dicts, the module attributes and the ``state_dict`` equal the snapshot taken before.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers.models.clip.modeling_clip as modeling_clip
import transformers.models.llama.modeling_llama as modeling_llama
from torch.nn.modules import module as torch_module

import probekit
from probekit.hooks import Recorder
from probekit import tiny
from probekit.steering import Direction, ablate, orthogonalize, steer

POINTS = ["vision.0.resid", "projector", "lm.embed", "lm.0.resid", "lm.0.attn", "lm.1.mlp", "lm.norm", "logits"]


class Injected(Exception):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_dir):
    """A private copy of the tiny LLaVA (faults are injected into it), warmed up with one plain
    forward: transformers 5 adds its own output-capture hooks on the first forward ever run."""
    m = probekit.load(tiny_dir("llava"))
    with torch.no_grad():
        m.hf(**m.prepare(tiny.fixture_images(1, 32), ["warm up"]))
    return m


@pytest.fixture
def ims():
    return tiny.fixture_images(4, 32, seed=2)


def snapshot(m) -> dict:
    hooks = {}
    for name, mod in m.hf.named_modules():
        hooks[name] = (tuple(mod._forward_hooks), tuple(mod._forward_pre_hooks), tuple(mod._backward_hooks),
                       tuple(getattr(mod, "_backward_pre_hooks", {})), tuple(mod._forward_hooks_with_kwargs),
                       tuple(mod._forward_pre_hooks_with_kwargs),
                       sorted(k for k in vars(mod) if k in ("forward", "__nnsight__") or k.startswith("_probekit")))
    glob = tuple(len(getattr(torch_module, g)) for g in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))
    return {
        "hooks": hooks,
        "global": glob,
        "state": {k: v.detach().clone() for k, v in m.hf.state_dict().items()},
        "params": {k: id(v) for k, v in m.hf.named_parameters(remove_duplicate=False)},
        "training": m.hf.training,
        "tie": getattr(m.hf.config, "tie_word_embeddings", None),
    }


def assert_unchanged(m, before: dict) -> None:
    after = snapshot(m)
    leaked = {k: (before["hooks"].get(k), v) for k, v in after["hooks"].items() if before["hooks"].get(k) != v}
    assert not leaked, f"hooks or attributes left behind on: {sorted(leaked)[:5]}"
    assert after["global"] == before["global"]
    assert after["state"].keys() == before["state"].keys()
    changed = [k for k in before["state"] if not (before["state"][k].dtype == after["state"][k].dtype
                                                   and torch.equal(before["state"][k], after["state"][k]))]
    assert not changed, f"weights changed: {changed[:5]}"
    assert after["params"] == before["params"] and after["training"] == before["training"]
    assert after["tie"] == before["tie"]


def n_hooks(m) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.hf.modules())


# ----------------------------------------------------------------------------- Recorder
def test_raise_in_the_recorder_body(model, ims):
    before, count = snapshot(model), n_hooks(model)
    inputs = model.prepare(ims[:1], ["x"])
    with pytest.raises(Injected):
        with Recorder(model, POINTS) as rec, torch.no_grad():
            model.hf(**inputs)
            assert set(rec.cache) == set(POINTS) and n_hooks(model) == count + len(POINTS)
            raise Injected
    assert_unchanged(model, before)


def test_keyboard_interrupt_in_the_recorder_body(model, ims):
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        with Recorder(model, POINTS):
            raise KeyboardInterrupt
    assert_unchanged(model, before)


def test_raise_while_registering_hooks(model, monkeypatch):
    """__enter__ fails on the 5th module: the 4 hooks already registered are removed."""
    import probekit.hooks.recorder as recorder

    before = snapshot(model)
    real, calls = recorder.get_module, {"n": 0}

    def flaky(root, path):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Injected("registration failed")
        return real(root, path)

    monkeypatch.setattr(recorder, "get_module", flaky)
    with pytest.raises(Injected):
        with Recorder(model, POINTS):
            pytest.fail("the body must not run")
    assert calls["n"] == 5
    assert_unchanged(model, before)


def test_raise_inside_a_forward_hook_during_the_forward(model, ims):
    """A reduce function that raises inside the hook, halfway through the forward."""
    before = snapshot(model)
    seen = []

    def reduce(point, h):
        seen.append(point)
        if point == "lm.0.resid":
            raise Injected("in the hook")
        return h

    with pytest.raises(Injected):
        with Recorder(model, POINTS, reduce=reduce) as rec:
            rec.run(**model.prepare(ims[:2], ["x", "y"]))
    assert seen[-1] == "lm.0.resid" and "logits" not in seen  # it really stopped mid-forward
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- collect
def test_position_callable_raising_inside_the_hook(model, ims, tmp_path):
    before = snapshot(model)
    baseline = n_hooks(model)
    inside = []

    def bad_position(ctx):
        inside.append(n_hooks(model) > baseline)  # called from within the hooked forward
        raise Injected("position callable failed")

    with pytest.raises(Injected):
        probekit.collect(model, ims, "x", points="lm.*.resid", positions=bad_position, store=tmp_path / "s",
                         progress=False)
    assert inside == [True]
    assert not (tmp_path / "s").exists()
    assert_unchanged(model, before)


def test_raise_in_prepare(model, ims, monkeypatch, tmp_path):
    before = snapshot(model)
    real = type(model).prepare
    calls = {"n": 0}

    def prepare(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Injected("processor failed")
        return real(model, *a, **k)

    monkeypatch.setattr(model, "prepare", prepare)
    with pytest.raises(Injected):
        probekit.collect(model, ims, "x", points="*", batch_size=2, shard_size=2, store=tmp_path / "s",
                         progress=False)
    monkeypatch.undo()
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 2)]
    assert_unchanged(model, before)


@pytest.mark.parametrize("backend", ["torch", "nnsight", "transformer_lens"])
def test_keyboard_interrupt_mid_collect(model, ims, monkeypatch, backend):
    """Ctrl-C in the middle of the second batch's forward (inside the language model)."""
    before = snapshot(model)
    real = modeling_llama.LlamaMLP.forward
    calls = {"n": 0}

    def forward(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 MLPs per forward: the 1st MLP of batch 2
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", forward)
    with pytest.raises(KeyboardInterrupt):
        probekit.collect(model, ims, "x", points=["lm.0.resid", "lm.1.resid"], batch_size=2, backend=backend,
                         progress=False)
    assert calls["n"] == 3
    monkeypatch.undo()
    assert_unchanged(model, before)


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
@pytest.mark.parametrize("where", ["vision", "lm"])
def test_backend_raises_mid_trace(model, ims, monkeypatch, backend, where):
    """A module raising inside the nnsight trace / TransformerBridge forward leaves no trace on the
    model, and the backend gives the same numbers as before afterwards (its state was reset)."""
    points = ["vision.0.resid", "lm.0.resid", "lm.1.mlp"]
    ref = probekit.collect(model, ims[:2], "x", points=points, backend=backend, progress=False)
    before = snapshot(model)
    cls = modeling_clip.CLIPEncoderLayer if where == "vision" else modeling_llama.LlamaDecoderLayer
    real = cls.forward

    def forward(self, *a, **k):
        raise Injected(f"{where} failed mid-trace")

    monkeypatch.setattr(cls, "forward", forward)
    with pytest.raises(Injected, match="mid-trace"):
        probekit.collect(model, ims[:2], "x", points=points, backend=backend, progress=False)
    monkeypatch.setattr(cls, "forward", real)
    assert_unchanged(model, before)
    again = probekit.collect(model, ims[:2], "x", points=points, backend=backend, progress=False)
    torch_ref = probekit.collect(model, ims[:2], "x", points=points, backend="torch", progress=False)
    for p in points:
        assert torch.equal(again[p], ref[p])
        torch.testing.assert_close(again[p], torch_ref[p], atol=1e-6, rtol=1e-5)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- steering
@pytest.fixture
def direction(model):
    g = torch.Generator().manual_seed(0)
    return Direction.from_vectors(torch.randn(model.d_model, generator=g))  # shared by every point


def _logits(model, inputs):
    with torch.no_grad():
        return model.hf(**inputs).logits


@pytest.mark.parametrize("make", ["ablate", "steer", "ablate-positions", "steer-tensor"])
def test_interventions_raise_in_body_and_in_hook(model, ims, direction, monkeypatch, make):
    inputs = model.prepare(ims[:2], ["x", "What shape?"])
    clean = _logits(model, inputs)
    before = snapshot(model)

    def build():
        if make == "ablate":
            return ablate(model, direction, points="lm.*.resid")
        if make == "ablate-positions":
            return ablate(model, direction, points="lm.*.resid", positions="last")
        if make == "steer":
            return steer(model, direction, alpha=4.0, points="lm.*.resid")
        return steer(model, torch.ones(model.d_model), alpha=2.0, points=["lm.0.resid", "lm.1.mlp"])

    # 1. in the body, after a forward that the intervention changed
    with pytest.raises(Injected):
        with build():
            assert not torch.equal(_logits(model, inputs), clean)
            raise Injected
    assert_unchanged(model, before)
    assert torch.equal(_logits(model, inputs), clean)

    # 2. inside the hook, mid-forward (the edit itself fails), as KeyboardInterrupt
    interv = build()
    real_edit, calls = interv.edit, {"n": 0}

    def edit(point, h):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_edit(point, h)

    interv.edit = edit
    with pytest.raises(KeyboardInterrupt):
        with interv:
            _logits(model, inputs)
    assert calls["n"] == 2
    assert_unchanged(model, before)

    # 3. halfway through registering its hooks
    import probekit.steering.interventions as interventions

    real_get, n = interventions.get_module, {"n": 0}

    def flaky(root, path):
        n["n"] += 1
        if n["n"] == 2:
            raise Injected("registration failed")
        return real_get(root, path)

    monkeypatch.setattr(interventions, "get_module", flaky)
    with pytest.raises(Injected):
        with build():
            pytest.fail("the body must not run")
    monkeypatch.undo()
    assert_unchanged(model, before)
    assert torch.equal(_logits(model, inputs), clean)


def test_orthogonalize_raise_in_body_restores_weights(model, ims, direction):
    inputs = model.prepare(ims[:2], ["x", "y"])
    clean = _logits(model, inputs)
    before = snapshot(model)
    with pytest.raises(Injected):
        with orthogonalize(model, direction):
            assert not torch.equal(_logits(model, inputs), clean)
            raise Injected
    assert_unchanged(model, before)
    assert torch.equal(_logits(model, inputs), clean)


def test_orthogonalize_failing_halfway_through_the_edit_restores_weights(model, direction):
    """The 3rd weight write fails (e.g. out of memory): the two already edited are put back."""
    before = snapshot(model)
    from probekit.steering.interventions import stream_writers

    writers = stream_writers(model)
    params = dict(model.hf.named_parameters(remove_duplicate=False))
    names = [f"{path}.{p}" for path, _ in writers for p in ("weight", "bias") if f"{path}.{p}" in params]
    victim = params[names[2]]
    real_copy = torch.Tensor.copy_
    state = {"armed": True}

    def copy_(self, src, *a, **k):
        if state["armed"]:
            state["armed"] = False
            raise Injected("write failed")
        return real_copy(self, src, *a, **k)

    victim.copy_ = copy_.__get__(victim)
    try:
        with pytest.raises(Injected):
            orthogonalize(model, direction)
    finally:
        del victim.copy_
    assert not state["armed"]
    assert_unchanged(model, before)


def test_orthogonalize_undo_twice_and_keyboard_interrupt(model, direction):
    before = snapshot(model)
    handle = orthogonalize(model, direction)
    assert handle.active
    with pytest.raises(KeyboardInterrupt):
        with handle:
            raise KeyboardInterrupt
    handle.undo()  # a second undo is a no-op, not a second restore
    assert not handle.active
    assert_unchanged(model, before)
