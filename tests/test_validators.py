"""The declared argument checks of probekit.errors: check_int and check_number.

Each refuses a bool, the wrong kind of number, NaN/inf and values out of range, accepts the bounds
themselves, and says in its message which argument was wrong and what it got, with an example fix.
"""

from __future__ import annotations

import doctest
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import probekit.errors
from probekit.errors import InputError, check_int, check_number


def refused(check, value, name, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        check(value, name, **kw)
    return info.value


# ---------------------------------------------------------------- check_int

@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_int_refuses_bool(value):
    err = refused(check_int, value, "batch_size", low=0)
    assert err.problem == f"batch_size must be a non-negative int, got {bool(value)} (bool)"


@pytest.mark.parametrize("value", [2.0, 2.5, np.float64(3.0), "3", None, [3], torch.tensor(3), Fraction(3, 1)])
def test_int_refuses_what_is_not_an_integer(value):
    err = refused(check_int, value, "n", low=1)
    assert err.problem.startswith("n must be a positive int, got ") and f"({type(value).__name__})" in err.problem


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_int_refuses_nan_and_inf(value):
    assert refused(check_int, value, "seed").problem == f"seed must be an int, got {value!r} (float)"


@pytest.mark.parametrize("value, kw, what", [
    (0, dict(low=1), "a positive int"),
    (-1, dict(low=0), "a non-negative int"),
    (18, dict(low=19), "an int >= 19"),
    (11, dict(high=10), "an int <= 10"),
    (0, dict(low=1, high=4), "an int in [1, 4]"),
    (5, dict(low=1, high=4), "an int in [1, 4]"),
    (np.int64(5), dict(low=1, high=4), "an int in [1, 4]"),
])
def test_int_refuses_out_of_range_naming_argument_and_value(value, kw, what):
    err = refused(check_int, value, "topk", **kw)
    assert err.problem == f"topk must be {what}, got {int(value)}"  # the type is right: not repeated


@pytest.mark.parametrize("value, kw", [
    (1, dict(low=1)), (4, dict(low=1, high=4)), (0, dict(low=0)), (19, dict(low=19)), (-3, dict(high=-3)),
    (-(10 ** 30), {}), (10 ** 30, dict(low=0)),
])
def test_int_accepts_the_bounds(value, kw):
    got = check_int(value, "k", **kw)
    assert got == value and type(got) is int


def test_int_accepts_numpy_integers_and_returns_int():
    for value in (np.int64(7), np.int32(7), np.uint8(7)):
        got = check_int(value, "k", low=1)
        assert got == 7 and type(got) is int


def test_int_none_only_when_allowed():
    assert check_int(None, "logits_topk", low=1, none=True) is None
    err = refused(check_int, 0, "logits_topk", low=1, none=True)
    assert err.problem == "logits_topk must be a positive int or None, got 0"
    assert refused(check_int, None, "logits_topk", low=1).problem == "logits_topk must be a positive int, got None (NoneType)"


def test_int_fix_gives_an_example():
    assert refused(check_int, 0, "shard_size", low=1, example=1024).fix == "e.g. shard_size=1024"
    assert refused(check_int, 0, "n_perm", low=19).fix == "e.g. n_perm=19"  # default: the lower bound
    assert refused(check_int, 9, "k", high=4).fix == "e.g. k=4"
    assert refused(check_int, "x", "seed").fix == "e.g. seed=0"
    assert refused(check_int, 0, "n", low=1, fix="pass e.g. n=200").fix == "pass e.g. n=200"
    assert str(refused(check_int, 0, "m", low=1, example=4)) == "m must be a positive int, got 0\n  How to fix: e.g. m=4"


# ---------------------------------------------------------------- check_number

@pytest.mark.parametrize("value", [True, False, np.bool_(False)])
def test_number_refuses_bool(value):
    assert refused(check_number, value, "alpha").problem == f"alpha must be a finite number, got {bool(value)} (bool)"


@pytest.mark.parametrize("value", ["2", None, [1.0], torch.tensor(1.0), 1j])
def test_number_refuses_what_is_not_a_real_number(value):
    err = refused(check_number, value, "beta")
    assert err.problem.startswith("beta must be a finite number, got ") and f"({type(value).__name__})" in err.problem


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), 10 ** 400])
def test_number_refuses_nan_inf_and_what_no_float_can_hold(value):
    err = refused(check_number, value, "alpha", example=4.0)
    assert err.problem.startswith("alpha must be a finite number, got ") and err.fix == "e.g. alpha=4.0"


@pytest.mark.parametrize("value, kw, what", [
    (0, dict(low=0, low_open=True), "a positive finite number"),
    (-0.1, dict(low=0), "a non-negative finite number"),
    (0.5, dict(low=1), "a finite number >= 1"),
    (1, dict(low=1, low_open=True), "a finite number > 1"),
    (2.5, dict(high=2), "a finite number <= 2"),
    (2, dict(high=2, high_open=True), "a finite number < 2"),
    (0, dict(low=0, high=1, low_open=True), "a finite number in (0, 1]"),
    (1, dict(low=0, high=1, low_open=True, high_open=True), "a finite number in (0, 1)"),
    (1.5, dict(low=0, high=1), "a finite number in [0, 1]"),
    (-1e-9, dict(low=0, high=0.25, high_open=True), "a finite number in [0, 0.25)"),
])
def test_number_refuses_out_of_range_naming_argument_and_value(value, kw, what):
    err = refused(check_number, value, "split", **kw)
    assert err.problem == f"split must be {what}, got {value!r}"


@pytest.mark.parametrize("value, kw", [
    (0, dict(low=0)), (1, dict(low=0, high=1, low_open=True)), (0.0, dict(low=0.0, high=1.0, high_open=True)),
    (-50.0, {}), (1e-300, dict(low=0, low_open=True)), (np.float32(0.25), dict(high=0.25)),
    (np.int64(3), dict(low=3, high=3)), (Fraction(1, 2), dict(low=0, high=1)),
])
def test_number_accepts_the_bounds_and_returns_float(value, kw):
    got = check_number(value, "x", **kw)
    assert got == float(value) and type(got) is float


def test_number_none_and_fix():
    assert check_number(None, "lr", low=0, none=True) is None
    assert refused(check_number, -1, "lr", low=0, none=True).problem == "lr must be a non-negative finite number or None, got -1"
    assert refused(check_number, 2, "k", low=0, high=1, low_open=True).fix == "e.g. k=0.5"  # default: the middle
    assert refused(check_number, 0, "epochs", low=0, low_open=True).fix == "e.g. epochs=1"
    assert refused(check_number, "a", "beta").fix == "e.g. beta=1.0"
    assert refused(check_number, 2, "k", low=0, high=1, fix="use k=0.2").fix == "use k=0.2"


def test_the_examples_in_the_docstrings_run():
    result = doctest.testmod(probekit.errors, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


# ---------------------------------------------------------------- the checks in place

def test_replaced_checks_keep_their_messages():
    """A few of the call sites: the argument's name, the value, and the example fix as before."""
    from probekit.data.scenes import make_scenes
    from probekit.readout.options import ReadoutOptions
    from probekit.sae.select import select_latents
    from probekit.steering.heldout import split_indices

    with pytest.raises(InputError, match=r"n must be a positive int, got 2\.0 \(float\)") as info:
        make_scenes(2.0)
    assert info.value.fix == "e.g. make_scenes(400)"
    with pytest.raises(InputError, match=r"n_perm must be an int >= 19, got 5") as info:
        ReadoutOptions(n_perm=5)
    assert "1 / (n_perm + 1)" in info.value.fix
    with pytest.raises(InputError, match=r"n_boot must be a non-negative int, got True \(bool\)"):
        ReadoutOptions(n_boot=True)  # was read as 1 bootstrap
    with pytest.raises(InputError, match=r"m must be a positive int, got 0"):
        select_latents(torch.zeros(4, 8), [0, 1, 0, 1], m=0)
    with pytest.raises(InputError, match=r"split must be a finite number in \(0, 1\), got nan"):
        split_indices([0, 1] * 10, math.nan)


# ---------------------------------------------------------------- declared constraints (probekit.params)

def test_declared_constraints_check_before_the_body_and_pass_converted_values():
    from probekit.params import Flag, Int, Number, checked

    calls = []

    @checked(n=Int(low=1, example=8), alpha=Number(low=0, high=1, low_open=True), chat=Flag(none=True))
    def f(x, n=4, *, alpha=0.5, chat=None, **rest):
        calls.append((x, n, alpha, chat, rest))
        return n

    assert f("a", np.int64(3), alpha=1, extra=2) == 3 and type(calls[-1][1]) is int  # numpy int arrives as int
    assert calls[-1] == ("a", 3, 1.0, None, {"extra": 2}) and type(calls[-1][2]) is float
    with pytest.raises(InputError, match=r"n must be a positive int, got 0") as info:
        f("b", 0)
    assert info.value.fix == "e.g. n=8" and len(calls) == 1  # refused before the body ran
    with pytest.raises(InputError, match="chat must be True, False or None, got 'no'"):
        f("c", chat="no")
    with pytest.raises(TypeError):  # a call that does not fit the signature fails as the function would
        f()
    assert list(f.parameter_constraints) == ["n", "alpha", "chat"]
    with pytest.raises(TypeError, match="has no parameter 'm'"):
        checked(m=Int())(lambda n: n)
    with pytest.raises(TypeError, match="not an Int, Number or Flag"):
        checked(n=int)(lambda n: n)


def test_the_front_doors_declare_their_constraints_and_refuse_before_loading_a_model(tmp_path):
    import probekit
    from probekit.hooks.collect import collect

    assert {"topk", "n_perm", "seed", "progress"} <= set(probekit.scan.parameter_constraints)
    assert {"batch_size", "logits_topk", "chat"} <= set(collect.parameter_constraints)
    assert set(probekit.membership.parameter_constraints) == {"k"}
    missing = str(tmp_path / "no-model-here")  # loading it would fail: the constraint must speak first
    with pytest.raises(InputError, match=r"n_perm must be an int >= 19, got 5"):
        probekit.scan(missing, [], n_perm=5)
    with pytest.raises(InputError, match=r"batch_size must be a positive int, got True \(bool\)"):
        collect(missing, [], "What?", batch_size=True)
    with pytest.raises(InputError, match=r"k must be a finite number in \(0, 1\], got 1\.5") as info:
        probekit.membership(missing, [], [], k=1.5)
    assert info.value.fix == "use k=0.2 (Min-K% Prob's default)"


def test_range_only_checks_became_declared_checks():
    """The last hand-written range checks: each now names the argument, the value and an example fix."""
    import pandas as pd

    from probekit.organisms.finetune import finetune
    from probekit.readout.ladder import ladder_verdict
    from probekit.studies.watermark.organism import Condition, _check

    with pytest.raises(InputError, match=r"alpha must be a finite number in \(0, 1\), got 1") as info:
        ladder_verdict(pd.DataFrame(), alpha=1)
    assert info.value.fix == "e.g. alpha=0.05"
    with pytest.raises(InputError, match=r"steps must be a positive int, got 0") as info:
        finetune(None, [object()], steps=0)  # refused before the model is touched
    assert info.value.fix == "e.g. steps=200"
    with pytest.raises(InputError, match=r"opacity must be a finite number in \(0, 1\], got 0"):
        _check(Condition(opacity=0.0))
    with pytest.raises(InputError, match=r"n_users must be an int >= 3, got 2") as info:
        _check(Condition(n_users=2))
    assert "folds are split by username" in info.value.fix
