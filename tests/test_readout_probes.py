"""LinearProbe against scikit-learn, the batched solver, folds and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from probekit.errors import InputError, LabelError
from probekit.readout._data import make_folds, parse_kind, parse_layer
from probekit.readout.probes import LinearProbe, fit_batched, heldout_logits, probe_layers


def blobs(n: int, d: int, K: int, seed: int = 0, sep: float = 0.6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    means = rng.standard_normal((K, d)) * sep
    X = rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d) + means[y] + 3.0
    return X, y


def sk_exact(X, y, C=1.0):
    return LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(X, y)


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-6)])
def test_linear_probe_matches_sklearn(K, dtype, tol):
    X, y = blobs(800, 20, K)
    Xtest, _ = blobs(2000, 20, K, seed=1)
    sc = StandardScaler().fit(X)
    Xs, Xts = sc.transform(X), sc.transform(Xtest)
    sk = sk_exact(Xs, y)
    pk = LinearProbe(C=1.0, dtype=dtype, tol=tol).fit(Xs, y)
    assert pk.coef_.shape == sk.coef_.shape == ((1, 20) if K == 2 else (K, 20))
    scale = np.abs(sk.coef_).max()
    np.testing.assert_allclose(pk.coef_, sk.coef_, rtol=1e-3, atol=1e-3 * scale)
    np.testing.assert_allclose(pk.intercept_, sk.intercept_, rtol=1e-3, atol=1e-3)
    assert (pk.predict(Xts) == sk.predict(Xts)).mean() >= 0.99
    np.testing.assert_allclose(pk.predict_proba(Xts), sk.predict_proba(Xts), atol=1e-3)


def test_linear_probe_standardizes_like_a_pipeline():
    """On raw data the probe equals StandardScaler + LogisticRegression."""
    X, y = blobs(600, 12, 3, seed=2)
    sc = StandardScaler().fit(X)
    sk = sk_exact(sc.transform(X), y)
    pk = LinearProbe(dtype="float64", tol=1e-10).fit(X, y)
    np.testing.assert_allclose(pk.coef_ * sc.scale_, sk.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pk.decision_function(X), sk.decision_function(sc.transform(X)), atol=1e-5)
    assert pk.score(X, y) == sk.score(sc.transform(X), y)


def test_sklearn_api_conformance():
    """scikit-learn's own estimator checks all pass but one: sample-weight equivalence at
    rtol 1e-7, which an iterative solver stopping at a tolerance cannot promise (scikit-learn
    marks it xfail for its own LogisticRegression too). Checked below at a realistic tolerance."""
    for est in (LinearProbe(dtype="float64", tol=1e-10), LinearProbe()):
        results = check_estimator(est, on_fail=None)
        failed = {r["check_name"] for r in results if r["status"] == "failed"}
        assert failed <= {"check_sample_weight_equivalence_on_dense_data"}, failed
    probe = LinearProbe(C=0.3, max_iter=50)
    twin = clone(probe)
    assert twin.get_params() == probe.get_params() and twin is not probe
    assert LinearProbe(**probe.get_params()).get_params() == probe.get_params()


def test_sample_weight_equals_repeated_rows():
    X, y = blobs(200, 6, 3, seed=4)
    w = np.random.default_rng(0).integers(0, 3, 200)
    weighted = LinearProbe(dtype="float64", tol=1e-10).fit(X, y, sample_weight=w)
    repeated = LinearProbe(dtype="float64", tol=1e-10).fit(np.repeat(X, w, 0), np.repeat(y, w))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), atol=1e-6)


def test_string_and_bool_labels():
    X, y = blobs(300, 5, 2, sep=2.0)
    names = np.array(["cat", "dog"])[y]
    probe = LinearProbe().fit(X, names)
    assert list(probe.classes_) == ["cat", "dog"]
    assert probe.score(X, names) > 0.9
    assert LinearProbe().fit(X, y.astype(bool)).predict(X).dtype == bool


def test_fit_batched_equals_separate_fits():
    rng = np.random.default_rng(0)
    B, n, d = 4, 300, 8
    X = torch.tensor(rng.standard_normal((B, n, d)) * rng.uniform(0.5, 2, (B, 1, d)) + 1.0)
    y = torch.tensor(rng.integers(0, 3, (B, n)))
    X[..., 0] += y  # some signal
    mask = torch.tensor(rng.random((B, n)) < 0.8, dtype=torch.float64)
    fit = fit_batched(X, y, mask, C=0.5, dtype=torch.float64, tol=1e-10)
    assert fit.coef_.shape == (B, 3, d) and fit.n_iter_.shape == (B,)
    for b in range(B):
        rows = mask[b].bool().numpy()
        one = LinearProbe(C=0.5, dtype="float64", tol=1e-10).fit(X[b].numpy()[rows], y[b].numpy()[rows])
        np.testing.assert_allclose(fit.coef_[b].numpy(), one.coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fit.intercept_[b].numpy(), one.intercept_, rtol=1e-6, atol=1e-8)
    # binary, float32, shared labels
    yb = (X[..., 1] > 1).long()[0]
    fit32 = fit_batched(X.float(), yb, C=1.0, tol=1e-5)
    assert bool(fit32.converged_.all())
    one = LinearProbe(dtype="float64", tol=1e-10).fit(X[2].numpy(), yb.numpy())
    np.testing.assert_allclose(fit32.coef_[2].numpy(), one.coef_, rtol=1e-3, atol=1e-3)


def test_heldout_logits_match_per_fold_fits():
    X, y = blobs(250, 6, 2, seed=3)
    folds = make_folds(y, cv=5, seed=0)
    Z, n_iter, _ = heldout_logits(torch.tensor(X)[None].clone(), torch.tensor(y)[None], torch.tensor(folds), 2, 1.0, tol=1e-10)
    assert Z.shape == (1, 1, 250, 1) and n_iter.shape == (1, 1, 5)
    for f in range(5):
        tr, te = folds != f, folds == f
        one = LinearProbe(dtype="float64", tol=1e-10).fit(X[tr], y[tr])
        np.testing.assert_allclose(Z[0, 0, te, 0].numpy(), one.decision_function(X[te]), atol=1e-6)


def test_points_that_finish_early_leave_the_solve_unchanged():
    # Easy and hard points finish at different iterations; finished points are compacted
    # out of the working set (their rows of X overwritten in place), which must not change
    # any result: every held-out logit equals the one from a separate fit.
    rng = np.random.default_rng(5)
    P, n, d = 4, 240, 12
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((P, n, d)) * np.linspace(0.3, 3.0, d)
    X[:, :, 0] += np.array([4.0, 0.05, 1.0, 0.0])[:, None] * (2 * y - 1)  # strong .. none
    folds = make_folds(y, cv=4, seed=0)
    Z, n_iter, _ = heldout_logits(torch.tensor(X).clone(), torch.tensor(y)[None], torch.tensor(folds), 2, 1.0,
                                     tol=1e-10)
    assert int(n_iter.max()) < 1000  # stopped by the gradient or the ftol test, not max_iter
    per_point = n_iter.amax((1, 2))
    assert len(set(per_point.tolist())) > 1, per_point  # the points did finish apart
    for p in range(P):
        for f in range(4):
            tr, te = folds != f, folds == f
            one = LinearProbe(dtype="float64", tol=1e-10).fit(X[p][tr], y[tr])
            np.testing.assert_allclose(Z[p, 0, te, 0].numpy(), one.decision_function(X[p][te]), atol=1e-6)


def test_cpu_chunks_in_threads_match_one_batch(monkeypatch):
    # On a multi-threaded CPU, solve() splits the points into chunks fitted concurrently,
    # each single-threaded. Each point's preconditioner is seeded by its index in the whole
    # solve, so the chunked fit takes the same path as one batch (same iterations; values
    # equal up to float rounding), and two runs are bit-identical.
    from probekit.readout import _solver

    monkeypatch.setattr(_solver, "_PARALLEL_MIN", 0)
    g = torch.Generator().manual_seed(0)
    P, n, d, cv = 5, 400, 150, 4
    X = torch.randn(P, n, d, generator=g) * torch.linspace(0.2, 3.0, d)
    y = (X[:, :, 0] * torch.linspace(0.0, 2.0, P)[:, None] + torch.randn(P, n, generator=g) > 0).long()
    folds = torch.arange(n) % cv
    W = (folds[None] != torch.arange(cv)[:, None]).float()[None].expand(P, cv, n).contiguous()
    labels = y[:, None, :].expand(P, cv, n).contiguous()
    seen = []
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = _solver.solve(X.clone(), labels, W, 2, 1.0, callback=lambda it, left: seen.append((it, left)))
        b = _solver.solve(X.clone(), labels, W, 2, 1.0)
        assert torch.get_num_threads() == 2  # restored
        torch.set_num_threads(1)  # one thread: the one-batch path
        one = _solver.solve(X.clone(), labels, W, 2, 1.0)
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("coef", "intercept", "logits", "n_iter"))
    assert torch.equal(a.n_iter, one.n_iter)
    torch.testing.assert_close(a.logits, one.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(a.coef, one.coef, rtol=0, atol=1e-5)
    assert seen and seen[-1][1] == 0  # progress from every chunk, all converged at the end


def test_folds_stratified_and_each_sample_held_out_once():
    y = np.array([0] * 30 + [1] * 70)
    folds = make_folds(y, cv=5, seed=0)
    assert sorted(np.bincount(folds)) == [20] * 5
    assert all((y[folds == f] == 0).sum() == 6 for f in range(5))
    assert not np.array_equal(folds, make_folds(y, cv=5, seed=1))  # shuffled by seed


def test_group_folds_keep_groups_apart():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 600)
    y = (groups % 2 + (rng.random(600) < 0.1)) % 2  # labels mostly follow the group
    folds = make_folds(y, groups, cv=5, seed=0)
    assert set(np.unique(folds)) == set(range(5))
    for f in range(5):
        assert not set(groups[folds == f]) & set(groups[folds != f])


def test_probe_layers_table_and_sklearn_agreement():
    rng = np.random.default_rng(0)
    n, d = 400, 24
    y = rng.integers(0, 2, n)
    acts = {f"lm.{i}.resid": torch.tensor(rng.standard_normal((n, d)) + 0.4 * i * y[:, None], dtype=torch.float32)
            for i in range(3)}
    acts["projector"] = torch.tensor(rng.standard_normal((n, 3, d)), dtype=torch.float32)
    df = probe_layers(acts, y, n_boot=200, progress=False, positions=["image", "text", "last"])
    assert list(df.point) == ["lm.0.resid", "lm.1.resid", "lm.2.resid"] + ["projector"] * 3
    assert list(df.position[3:]) == ["image", "text", "last"]
    assert df.layer.tolist()[:3] == [0.0, 1.0, 2.0] and np.isnan(df.layer[3])
    assert list(df.kind) == ["resid"] * 3 + ["projector"] * 3
    for col in ("point", "layer", "kind", "position", "n", "accuracy", "accuracy_lo", "accuracy_hi",
                "chance", "mi_bits", "mi_lo", "mi_hi", "mi_perm_bits", "control_accuracy",
                "selectivity", "log_loss"):
        assert col in df.columns
    assert (df.accuracy_lo <= df.accuracy).all() and (df.accuracy <= df.accuracy_hi).all()
    assert df.chance.iloc[0] == np.bincount(y).max() / n
    # same numbers as a loop of pipelines on the same folds
    folds = make_folds(y, cv=5, seed=0)
    for i in range(3):
        x = acts[f"lm.{i}.resid"].numpy()
        pred = np.empty(n, int)
        for f in range(5):
            tr, te = folds != f, folds == f
            sc = StandardScaler().fit(x[tr])
            pred[te] = LogisticRegression(C=1.0).fit(sc.transform(x[tr]), y[tr]).predict(sc.transform(x[te]))
        assert abs((pred == y).mean() - df.accuracy[i]) <= 0.01
    assert df.accuracy[2] > 0.95 and df.selectivity[2] > 0.35
    assert abs(df.control_accuracy[0] - 0.5) < 0.1


def test_input_kinds_store_and_stacked_tensor():
    rng = np.random.default_rng(1)
    y = np.array(["a", "b"])[rng.integers(0, 2, 200)]
    stacked = torch.randn(2, 200, 8)

    class Store:
        points = ["vision.0.resid", "lm.1.xattn"]

        def __getitem__(self, name):
            return stacked[self.points.index(name)]

    a = probe_layers(Store(), y, n_boot=0, progress=False, control=False, permutation=False)
    b = probe_layers(stacked, y, n_boot=0, progress=False, control=False, permutation=False)
    assert list(a.kind) == ["vision", "xattn"] and list(b.point) == ["layer.0", "layer.1"]
    np.testing.assert_allclose(a.accuracy, b.accuracy)
    assert a.control_accuracy.isna().all() and a.mi_perm_bits.isna().all()
    one = probe_layers(stacked[0], y, n_boot=0, progress=False)
    assert len(one) == 1 and one.accuracy[0] == b.accuracy[0]


def test_name_parsing():
    assert parse_layer("lm.12.mlp") == 12 and np.isnan(parse_layer("logits"))
    assert [parse_kind(s) for s in ("lm.3.attn", "lm.embed", "logits", "vision.4.resid", "lm.2.resid@last")] == [
        "attn", "embed", "logits", "vision", "resid"]


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(labels=np.arange(99) % 2), LabelError, "99 labels for 100 samples"),
        (dict(labels=np.zeros(100)), LabelError, "single class"),
        (dict(labels=np.r_[np.zeros(97), np.ones(3)]), LabelError, "smallest class has only 3"),
        (dict(groups=np.arange(50)), LabelError, "groups of shape (50,) for 100 samples"),
        (dict(groups=np.arange(100) % 3), LabelError, "only 3 distinct groups"),
        (dict(nan_point=True), InputError, "'lm.1.resid' contain NaN"),
        (dict(cv=1), InputError, "cv must be"),
        (dict(acts="not activations"), InputError, "cannot read activations"),
    ],
)
def test_bad_inputs_raise_before_fitting(kwargs, error, words):
    acts = {f"lm.{i}.resid": torch.randn(100, 4) for i in range(3)}
    if kwargs.pop("nan_point", False):
        acts["lm.1.resid"][7, 2] = float("nan")
    args = dict(acts=acts, labels=np.arange(100) % 2)
    args.update(kwargs)
    with pytest.raises(error) as info:
        probe_layers(args.pop("acts"), args.pop("labels"), n_boot=0, progress=False, **args)
    assert words in str(info.value) and "How to fix" in str(info.value)


def test_linear_probe_rejects_one_class():
    with pytest.raises(ValueError, match="class"):
        LinearProbe().fit(np.random.rand(10, 3), np.ones(10))


def test_leaks_column_planted_signal_and_the_permutation_verdict():
    """The instrument: planted label information at two of five points is found there and only there;
    p-values are the permutation p-values of each row's statistics, adjusted by step-down maxT over all five."""
    from probekit._stats import maxt_adjust, permutation_p

    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (240,), generator=g)
    acts = {f"lm.{i}.resid": torch.randn(240, 8, generator=g) for i in range(5)}
    for i in (2, 3):
        acts[f"lm.{i}.resid"][:, 0] += 1.5 * (2 * y - 1)
    df = probe_layers(acts, y, n_boot=100, progress=False, n_perm=500)
    assert df.leaks.tolist() == [False, False, True, True, False]
    null = np.stack(df.perm_null)
    assert null.shape == (5, 501)
    assert df.p_value.tolist() == pytest.approx(permutation_p(null)[0].tolist())
    assert df.p_adjusted.tolist() == pytest.approx(maxt_adjust(null).tolist())
    assert (df.p_adjusted[[2, 3]] == 1 / 501).all() and (df.p_adjusted[[0, 1, 4]] > 0.05).all()
    assert (df.test == "permutation").all() and (df.n_units == 240).all()


def test_group_verdict_counts_groups_not_samples():
    """20 groups of 15 alike samples, one label per group, no feature carrying the label: with the
    groups the permutation test moves whole groups' labels and keeps its level; treated as 300
    independent samples the same data look significant far more often than 5%."""
    rng = np.random.default_rng(0)
    hits_groups = hits_samples = 0
    for draw in range(40):
        groups = np.repeat(np.arange(20), 15)
        y = np.repeat(rng.permutation(np.arange(20) % 2), 15)
        x = torch.from_numpy((rng.normal(size=(20, 6)) * 3)[groups] + rng.normal(size=(300, 6))).float()
        kw = dict(n_boot=0, progress=False, n_perm=200, seed=draw, control=False, permutation=False)
        hits_groups += bool(probe_layers({"lm.0.resid": x}, y, groups, **kw).p_value[0] < 0.05)
        hits_samples += bool(probe_layers({"lm.0.resid": x}, y, **kw).p_value[0] < 0.05)
    assert hits_groups <= 6 and hits_samples >= 12, (hits_groups, hits_samples)


def test_leakage_table_corrects_over_all_rows():
    """Residual and output-logit rows come from separate probe calls on the same permutations; the
    maxT correction runs over all of them."""
    from probekit._stats import maxt_adjust
    from probekit.readout.leakage import leakage

    g = torch.Generator().manual_seed(0)
    y = torch.arange(160) % 2
    acts = {"lm.0.resid": torch.randn(160, 2, 6, generator=g), "logits": torch.randn(160, 40, generator=g)}
    acts["lm.0.resid"][:, 1, 0] += 2.0 * (2 * y - 1)
    t = leakage(acts, y, n_boot=50, progress=False, topk=5)
    assert len(t) == 3 and sorted(t.source.unique()) == ["logits-topk", "residual"]
    assert t.p_adjusted.tolist() == pytest.approx(maxt_adjust(np.stack(t.perm_null)).tolist())
    assert t.leaks[1] and not t.leaks[2]  # the planted position leaks, the output carries nothing
    alone = probe_layers({"lm.0.resid": acts["lm.0.resid"]}, y, n_boot=50, progress=False)
    assert alone.p_value.tolist() == pytest.approx(t.p_value[:2].tolist())
    # 3 tests, not 2: a larger family never lowers an adjusted p, and raises the one not far above its permutations
    assert (t.p_adjusted[:2].to_numpy() >= alone.p_adjusted.to_numpy()).all() and t.p_adjusted[0] > alone.p_adjusted[0]
    assert t.p_adjusted[1] == alone.p_adjusted[1] == 1 / 1001  # far above every permutation: 1 / (B + 1) in any family
