"""Output probes on the stored top-k (``collect(logits_topk=k)``) give the numbers the full logits gave.

``scan`` now records only the top k log-probabilities and token ids of the output distribution;
before, it stored the full-vocabulary ``logits`` at every position and cut them to the top k in
the readout. These tests run both paths on the tiny LLaVA and compare the tables exactly.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import probekit
from probekit.errors import InputError
from probekit.hooks import ActivationStore
from probekit import tiny
from probekit.readout.ladder import ladder_features, leakage_ladder
from probekit.readout.leakage import leakage, topk_features
from probekit.readout import plugins
from test_readout_plugins import _OneTokenWords  # a model whose every word is one token

pytestmark = pytest.mark.usefixtures("one_thread")

N = 40
LABELS = [i % 2 for i in range(N)]
PROBE = dict(cv=2, seed=0, n_boot=50, progress=False)


@pytest.fixture(scope="module")
def images():
    return tiny.fixture_images(N, 32, seed=4)


def _collect(model, images, **kw):
    return probekit.collect(model, images, "What shape?", points=["lm.*.resid", "logits"],
                            positions=("last", "image_mean"), batch_size=8, progress=False, **kw)


@pytest.fixture(scope="module")
def full(llava, images):
    """The path before: the full logits stored at every position."""
    return _collect(llava, images)


def test_topk_features_from_the_stored_topk_equal_those_from_the_logits(full, llava, images):
    kept = _collect(llava, images, logits_topk=10)
    for j in range(2):
        lg = full.read("logits", j)
        vals, ids = kept.read("logits.topk", j), kept.read("logits.topk_ids", j)
        for k in (1, 5, 10):  # the first k of the stored top 10 are the top k
            assert torch.equal(topk_features(vals, k, ids=ids), topk_features(lg, k))
    with pytest.raises(InputError, match="logits_topk >= 11"):
        topk_features(vals, 11, ids=ids)
    with pytest.raises(InputError, match="differ"):
        topk_features(vals, 5, ids=ids[:, :5])


@pytest.mark.parametrize("on_disk", [False, True])
def test_leakage_table_is_the_same_from_the_stored_topk(full, llava, images, tmp_path, on_disk):
    kept = _collect(llava, images, logits_topk=10, **({"store": tmp_path / "s", "shard_size": 16} if on_disk else {}))
    assert "logits" not in kept.points
    before = leakage(full, LABELS, topk=10, **PROBE)
    pd.testing.assert_frame_equal(leakage(kept, LABELS, topk=10, **PROBE), before, check_exact=True)
    # a smaller k reads the first k of the stored ten
    pd.testing.assert_frame_equal(leakage(kept, LABELS, topk=5, **PROBE), leakage(full, LABELS, topk=5, **PROBE),
                                  check_exact=True)
    # an in-memory dict of the same tensors (the top-k points named as collect names them)
    as_dict = {p: kept[p] for p in kept.points}
    pd.testing.assert_frame_equal(leakage(as_dict, LABELS, topk=10, **PROBE),
                                  leakage({p: full[p] for p in full.points}, LABELS, topk=10, **PROBE), check_exact=True)
    with pytest.raises(InputError, match="top 10 only"):
        leakage(kept, LABELS, topk=11, **PROBE)


def test_ladder_is_the_same_from_the_stored_topk(full, llava, images):
    kept = _collect(llava, images, logits_topk=50)
    args = dict(ks=(2, 5, 10, 50), position="last", **PROBE)
    pd.testing.assert_frame_equal(leakage_ladder(kept, LABELS, **args), leakage_ladder(full, LABELS, **args),
                                  check_exact=True)
    # the full and answer-token rungs need every token: refused from a top-50 store, exact from a top-vocab one
    with pytest.raises(InputError, match="full rung"):
        ladder_features(kept, ks=(2, None), position="last")
    with pytest.raises(InputError, match="answer-token rung"):
        ladder_features(kept, ks=(2,), answer_ids=[3, 4], position="last")
    vocab = full["logits"].shape[-1]
    every = _collect(llava, images, logits_topk=vocab)
    wide = dict(ks=(2, 5, None), answer_ids=[3, 4], position="last")
    a, b = ladder_features(every, **wide), ladder_features(full, **wide)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_scan_records_only_the_topk_and_reports_what_the_full_logits_gave(llava, images, tmp_path):
    r = probekit.scan(llava, images, labels=LABELS, prompts="What shape?", topk=10, store=str(tmp_path / "s"),
                      batch_size=8, **PROBE)
    stored = ActivationStore.open(tmp_path / "s")
    assert "logits" not in stored.points and stored.info("logits.topk")["shape"] == [2, 10]
    full = _collect(llava, images, store=tmp_path / "full")  # what scan recorded before
    before = leakage(full, LABELS, topk=10, points=[p for p in full.points if p in r.settings["points"] or p == "logits"],
                     **PROBE)
    pd.testing.assert_frame_equal(r.table, before, check_exact=True)


def _logits_topk(topk, ladder, answer_ids):
    """What scan keeps of the output with labels: the probes' needs merged with the ladder's (``answer_ids``:
    as many one-token answer words)."""
    words = None if answer_ids is None else tuple("w" * (i + 1) for i in range(len(answer_ids)))
    ctx = plugins.Context(_OneTokenWords(), LABELS, topk=topk, ladder=ladder, answer_tokens=words, positions=("last",))
    chosen = [plugins.ProbesReadout()] + ([plugins.LadderReadout()] if ladder is not None else [])
    return plugins.output_topk([r.needs(ctx) for r in chosen])


def test_scan_keeps_the_full_logits_only_for_the_rungs_that_read_them():
    assert _logits_topk(10, None, None) == 10
    assert _logits_topk(None, (2, 5, 50), None) == 50
    assert _logits_topk(10, (2, 5), [7, 8, 9]) == 10  # no rung of k = 3 answer tokens
    assert _logits_topk(10, (2, 5, None), None) is None  # the full rung
    assert _logits_topk(10, (2, 5), [7, 8]) is None  # the k = 2 rung reads the two answer tokens
