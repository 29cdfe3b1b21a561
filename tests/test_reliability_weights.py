"""A user's model always comes back: weight edits undone in any order, hooks never outlive their owner.

* ``orthogonalize`` handles undone in every order (2 and 3 handles), nested, crossed with
  ``ablate`` / ``steer`` hooks opened and closed in every order, and with an exception inside:
  the weights, the embedding tie, the parameter objects and the hook dicts end as they began,
  bit for bit, and after each undo the weights equal those of the remaining edits applied
  afresh (the undone edit leaves no trace). LLaVA and PaliGemma (tied embeddings).
* A real SIGINT in the middle of an edit or an undo is held until the weights are consistent.
* A Recorder or an intervention entered and never exited loses its hooks when it is dropped.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal

import pytest
import torch

import probekit
from probekit.errors import InputError
from probekit.hooks import Recorder, live_hooks, remove_hooks
from probekit import tiny
from probekit.steering import Direction, ablate, orthogonalize, steer

pytestmark = pytest.mark.usefixtures("one_thread")


class Injected(Exception):
    pass


@pytest.fixture(scope="module", params=["llava", "paligemma"])
def model(request, tiny_dir):
    """A private copy (its weights are edited), warmed up: transformers adds its own hooks on the first forward."""
    m = probekit.load(tiny_dir(request.param))
    with torch.no_grad():
        m.hf(**m.prepare(tiny.fixture_images(1, 32), ["warm up"]))
    return m


@pytest.fixture(scope="module")
def inputs(model):
    return model.prepare(tiny.fixture_images(2, 32, seed=3), ["What is it?", "x"])


def directions(model, k: int, seed: int = 0) -> list[Direction]:
    g = torch.Generator().manual_seed(seed)
    return [Direction.from_vectors(torch.randn(model.d_model, generator=g)) for _ in range(k)]


def state(m) -> dict:
    """Everything an edit or a hook could leave behind."""
    return {
        "weights": {k: v.detach().clone() for k, v in m.hf.state_dict().items()},
        "params": {k: id(v) for k, v in m.hf.named_parameters(remove_duplicate=False)},
        "tied": m.unembed.weight is m.hf.get_input_embeddings().weight,
        "tie_flag": getattr(m.hf.config, "tie_word_embeddings", None),
        "hooks": {n: (tuple(x._forward_hooks), tuple(x._forward_pre_hooks)) for n, x in m.hf.named_modules()},
    }


def assert_same(a: dict, b: dict, what: str = "", ids: bool = True) -> None:
    """Equal weights (bit for bit, same dtypes), tie, config flag and hooks; and the same parameter
    objects unless ``ids=False`` (an untied lm_head is a new parameter each time it is untied)."""
    changed = [k for k in a["weights"] if not (a["weights"][k].dtype == b["weights"][k].dtype
                                               and torch.equal(a["weights"][k], b["weights"][k]))]
    assert not changed, f"{what}weights changed: {changed[:4]}"
    for key in ("params", "tied", "tie_flag", "hooks") if ids else ("tied", "tie_flag", "hooks"):
        assert a[key] == b[key], f"{what}{key} differ"


def logits(model, inputs):
    with torch.no_grad():
        return model.hf(**inputs).logits


def applied_afresh(model, dirs: list[Direction]) -> dict:
    """The state after applying ``dirs`` in order to the current weights (then undone, newest first)."""
    handles = [orthogonalize(model, d) for d in dirs]
    after = state(model)
    for h in reversed(handles):
        h.undo()
    return after


# ----------------------------------------------------------------------------- undo in any order
@pytest.mark.parametrize("k", [2, 3])
def test_every_undo_order_restores_bit_for_bit(model, inputs, k):
    dirs = directions(model, k)
    before, clean = state(model), logits(model, inputs)
    references = {sub: applied_afresh(model, [dirs[i] for i in sub])
                  for r in range(k + 1) for sub in itertools.combinations(range(k), r)}
    assert_same(state(model), before)
    orders = 0
    for order in itertools.permutations(range(k)):
        handles = [orthogonalize(model, d) for d in dirs]
        assert not torch.equal(logits(model, inputs), clean)
        left = list(range(k))
        for i in order:
            handles[i].undo()
            left.remove(i)
            assert not handles[i].active and all(handles[j].active for j in left)
            # the undone edit leaves no trace: the weights are those of the others applied afresh
            assert_same(state(model), references[tuple(left)], f"undo order {order}, after {i}: ", ids=False)
        handles[order[0]].undo()  # a second undo is a no-op
        assert_same(state(model), before, f"undo order {order}: ")
        assert torch.equal(logits(model, inputs), clean)
        orders += 1
    assert orders == {2: 2, 3: 6}[k]


def test_hooks_and_edits_opened_and_closed_in_every_order(model, inputs):
    """Two orthogonalize handles, an ablate and a steer: every order of opening times every order of closing."""
    d1, d2, d3 = directions(model, 3, seed=1)
    make = {"orth1": lambda: orthogonalize(model, d1), "orth2": lambda: orthogonalize(model, d2),
            "ablate": lambda: ablate(model, d3, points="lm.*.resid").__enter__(),
            "steer": lambda: steer(model, torch.ones(model.d_model), alpha=2.0, points="lm.0.resid").__enter__()}
    close = {"orth1": lambda h: h.undo(), "orth2": lambda h: h.undo(), "ablate": lambda h: h.__exit__(None, None, None),
             "steer": lambda h: h.__exit__(None, None, None)}
    before, clean = state(model), logits(model, inputs)
    full, orders = None, 0
    for opening in itertools.permutations(make):
        for closing in itertools.permutations(make):
            open_ = {name: make[name]() for name in opening}
            if full is None:
                full = logits(model, inputs)
                assert not torch.equal(full, clean)
            for name in closing:
                close[name](open_[name])
            assert_same(state(model), before, f"open {opening} close {closing}: ")
            orders += 1
    assert torch.equal(logits(model, inputs), clean)
    assert orders == 24 * 24


def test_nested_blocks_with_an_exception_inside(model, inputs):
    d1, d2, d3 = directions(model, 3, seed=2)
    before, clean = state(model), logits(model, inputs)
    with pytest.raises(Injected):
        with orthogonalize(model, d1), ablate(model, d3, points="lm.*.resid"):
            with orthogonalize(model, d2), steer(model, torch.ones(model.d_model), points="lm.1.resid"):
                assert not torch.equal(logits(model, inputs), clean)
                raise Injected
    assert_same(state(model), before)
    # crossed: the outer handle undone inside the inner block, then an exception
    only_d2 = applied_afresh(model, [d2])
    outer = orthogonalize(model, d1)
    with pytest.raises(Injected):
        with orthogonalize(model, d2):
            outer.undo()
            assert_same(state(model), only_d2, ids=False)  # d1 gone, d2 as if applied alone
            raise Injected
    assert_same(state(model), before)
    assert torch.equal(logits(model, inputs), clean)


# ----------------------------------------------------------------------------- Ctrl-C while weights are written
def _sigint_on_write(model, monkeypatch, nth: int) -> dict:
    """Send a real SIGINT to this process from inside the ``nth`` weight write of a parameter."""
    calls = {"n": 0}
    real = torch.Tensor.copy_

    def copy_(self, src, *a, **k):
        out = real(self, src, *a, **k)
        if isinstance(self, torch.nn.Parameter):
            calls["n"] += 1
            if calls["n"] == nth:
                os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    return calls


def test_sigint_during_an_edit_leaves_the_weights_as_they_were(model, inputs, monkeypatch):
    d1, = directions(model, 1, seed=4)
    before, clean = state(model), logits(model, inputs)
    calls = _sigint_on_write(model, monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        orthogonalize(model, d1)  # interrupted on the 2nd of its writes: finished, then undone
    monkeypatch.undo()
    assert calls["n"] > 2  # it went on past the signal (the edit and its undo)
    assert_same(state(model), before)
    assert torch.equal(logits(model, inputs), clean)


def test_sigint_during_an_out_of_order_undo_finishes_it(model, inputs, monkeypatch):
    d1, d2 = directions(model, 2, seed=5)
    before = state(model)
    ref = applied_afresh(model, [d2])
    h1, h2 = orthogonalize(model, d1), orthogonalize(model, d2)
    calls = _sigint_on_write(model, monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        h1.undo()  # reverts h2, reverts h1, re-applies h2: the signal waits until all three are done
    monkeypatch.undo()
    assert calls["n"] > 1 and not h1.active and h2.active
    assert_same(state(model), ref, ids=False)
    h2.undo()
    assert_same(state(model), before)


# ----------------------------------------------------------------------------- hooks that outlive their owner
def n_hooks(m) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.hf.modules())


POINTS = ["vision.0.resid", "projector", "lm.0.resid", "lm.1.mlp", "logits"]


@pytest.mark.parametrize("owner", ["recorder", "ablate", "steer-positions"])
def test_an_owner_entered_and_dropped_takes_its_hooks_with_it(model, inputs, owner):
    before, clean = state(model), logits(model, inputs)
    d, = directions(model, 1, seed=6)
    if owner == "recorder":
        obj = Recorder(model, POINTS)
    elif owner == "ablate":
        obj = ablate(model, d, points="lm.*.resid")
    else:
        obj = steer(model, torch.ones(model.d_model), alpha=3.0, points="lm.0.resid", positions="last")
    obj.__enter__()  # and never exited
    assert n_hooks(model) > sum(len(h) + len(p) for h, p in before["hooks"].values())
    assert len(live_hooks(model)) == n_hooks(model) - sum(len(h) + len(p) for h, p in before["hooks"].values())
    if owner == "recorder":
        logits(model, inputs)
        assert set(obj.cache) == set(POINTS)  # alive, it records
    else:
        assert not torch.equal(logits(model, inputs), clean)  # alive, it edits
    del obj
    gc.collect()
    assert_same(state(model), before)
    assert live_hooks(model) == [] and torch.equal(logits(model, inputs), clean)


def test_remove_hooks_clears_owners_still_referenced(model, inputs):
    before, clean = state(model), logits(model, inputs)
    d, = directions(model, 1, seed=7)
    kept = [Recorder(model, POINTS).__enter__(), ablate(model, d, points="lm.*.resid").__enter__()]
    assert sorted(set(live_hooks(model))) == ["Intervention", "Recorder"]
    assert remove_hooks(model) == len(POINTS) + model.n_layers
    assert_same(state(model), before)
    assert torch.equal(logits(model, inputs), clean) and kept[0].cache == {}
    kept[1].__exit__(None, None, None)  # exiting afterwards is harmless
    assert_same(state(model), before)


def test_a_recorder_entered_twice_is_refused(model):
    before = state(model)
    rec = Recorder(model, POINTS)
    with rec:
        with pytest.raises(InputError, match="entered twice"):
            rec.__enter__()
        assert n_hooks(model) - sum(len(h) + len(p) for h, p in before["hooks"].values()) == len(POINTS)
    assert_same(state(model), before)
