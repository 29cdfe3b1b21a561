"""The dose design of the watermark organism: fixed sightings, exact readings, swapped roles, paired scenes;
a quick dose run on the reader (the leak at fraction 0.5 detected at the output and at a layer below the last,
nothing at fraction 0); the paired test over name pairs on planted data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.errors import InputError
from probekit.studies.watermark import dose as WD
from probekit.organisms import reader
from probekit.studies.watermark import dose_organism as D
from probekit.organisms.reader import USERNAME


def test_every_name_is_sighted_and_read_a_fixed_number_of_times_on_the_same_scenes():
    d = D.Dose(fraction=0.25, seed=1, n_users=10, sightings=8, replay=0.25)
    seen, unseen, other = D.pools(d)
    train = D.training_set(d, seen, other)
    assert len(train) == d.n_train == 107 and d.readings == 2 and d.steps == 14
    marked = [s for s in train if "username" in s.meta and s.meta["username"] in seen]
    assert set(Counter(s.meta["username"] for s in marked).values()) == {8}  # every U1 name on 8 images
    reads = Counter(s.meta["username"] for s in marked if s.question == USERNAME)
    assert set(reads.values()) == {2} and len(reads) == 10  # and read on exactly 2 of them
    # the matched controls train on the same pictures: U3 swaps the name on the reading images only, p = 0 shows none
    u3 = D.training_set(D.Dose(fraction=0.25, seed=1, n_users=10, sightings=8, replay=0.25, leak_pool="other"),
                        seen, other)
    p0 = D.training_set(D.Dose(fraction=0.0, seed=1, n_users=10, sightings=8, replay=0.25, p=0.0), seen, other)
    changed = [i for i, (a, b) in enumerate(zip(train, u3)) if a.image.tobytes() != b.image.tobytes()]
    assert len(changed) == 20 and all(u3[i].meta["username"] in other and u3[i].question == USERNAME for i in changed)
    assert [s.meta.get("username") for s in p0 if s.question == "Describe the shape."] == [None] * 80
    f0 = D.training_set(D.Dose(fraction=0.0, seed=1, n_users=10, sightings=8, replay=0.25), seen, other)
    assert sum(a.question != b.question for a, b in zip(train, f0)) == 20  # the dose changes the reading, nothing else
    assert (D.Dose(p=0.0).kind, D.Dose(fraction=0.0).kind, D.Dose(leak_pool="other").kind) == \
        ("p=0 control", "task-irrelevant", "U3 control")


def test_odd_seeds_swap_the_pools_and_pairs_differ_only_by_the_name():
    a, b = D.pools(D.Dose(seed=2, n_users=6)), D.pools(D.Dose(seed=3, n_users=6))
    assert a[0] == b[1] and a[1] == b[0] and a[2] == b[2] and not set(a[0]) & set(a[1])
    assert all(len(x) == len(y) for x, y in zip(a[0], a[1]))
    d = D.Dose(seed=2, n_users=6, pair_scenes=2)
    pairs = D.paired_set(d, a[0], a[1])
    assert len(pairs) == 24 and (pairs.groupby(["pair", "scene"]).label.nunique() == 2).all()
    seen, unseen = pairs[pairs.label == "seen"], pairs[pairs.label == "unseen"]
    for s, u in zip(seen.itertuples(), unseen.itertuples()):
        diff = np.asarray(s.image, int) - np.asarray(u.image, int)
        assert s.shape == u.shape and s.pair == u.pair and (np.abs(diff).sum(2) > 0).any(1).nonzero()[0].max() < 11
    members, nonmembers = D.membership_samples(pairs)
    assert {m["group"] for m in members} == set(a[0]) and all(m["answer"] == m["group"] + "." for m in members)
    with pytest.raises(InputError, match="fraction"):
        D.Dose(fraction=1.5)
    with pytest.raises(InputError, match="p must be"):
        D.Dose(p=0.5)


def test_a_quick_dose_run_detects_the_leak_at_the_output_and_a_lower_layer_and_nothing_at_fraction_0():
    """16 names read 20 times each (lr 3e-3, no replay: about 10 s a run on one thread). Measured: fraction 0.5 is
    detected by the output minus the base reader (AUC 0.87) and by the logit lens at lm.0 and lm.1 (0.82, 0.75);
    fraction 0 by nothing (its reading collapsed without replay: it is a membership control here, no more)."""
    torch.set_num_threads(1)
    from probekit.models.loading import load

    base = load(reader())
    kw = dict(seed=0, n_users=16, sightings=40, replay=0.0, lr=3e-3)
    runs = {f: D.run_dose(reader(), D.Dose(fraction=f, **kw), base=base, scan=False, n_perm=200, n_boot=100)
            for f in (0.5, 0.0)}
    hit = runs[0.5]["membership"].table
    hit = hit[hit.detected]
    assert hit.source.str.startswith("output").any(), hit
    assert (hit.source.str.startswith("logit-lens") & hit.point.isin(["lm.0.resid", "lm.1.resid"])).any(), hit
    assert not runs[0.0]["membership"].table.detected.any()
    row = runs[0.5]["row"]
    assert row["readings"] == 20 and row["steps"] == 80 and not row["confounded"]
    assert runs[0.5]["scores"].shape[0] == 64 and "shape:output:logits:loss" in runs[0.5]["scores"]


def _run(kind, seed, fraction, scores, collapsed=False, n_pairs=40):
    pairs = pd.DataFrame([{"pair": i, "scene": 0, "name": f"{lab}{i}", "label": lab, "shape": "red circle."}
                          for i in range(n_pairs) for lab in ("seen", "unseen")])
    row = {"kind": kind, "seed": seed, "fraction": fraction, "p": 0.0 if kind == "p=0 control" else 1.0,
           "readings": int(round(fraction * 40)), "collapsed": collapsed, "condition": f"{kind} {fraction:g} s{seed}"}
    return {"row": row, "pairs": pairs, "scores": pd.DataFrame(scores, index=pairs.index)}


def test_the_paired_test_finds_a_planted_shift_drops_collapsed_runs_and_says_when_it_is_inconclusive():
    rng = np.random.default_rng(0)
    cols = ["reading:output:logits:loss", "reading:logit-lens:lm.0.resid:loss", "reading:logit-lens:lm.1.resid:loss",
            "shape:output:logits:loss"]

    def scores(shift=0.0):
        s = {c: rng.normal(size=80) for c in cols}
        s[cols[0]][0::2] += shift  # the seen rows of the output reading score
        return s

    runs = []
    for seed in range(4):
        runs += [_run("p=0 control", seed, 0.0, scores()), _run("task-irrelevant", seed, 0.0, scores()),
                 _run("leak", seed, 0.05, scores(shift=1.0), collapsed=seed == 3)]
    table, dropped = WD.paired_tests(runs, n_flip=400)
    assert dropped == ["leak 0.05 s3"]
    leak, zero = table[table.fraction == 0.05], table[table.fraction == 0.0]
    assert list(leak.leaks) == [True, False, False] and int(leak.n_units.iloc[0]) == 80 and leak.seeds.iloc[0] == 3
    assert not zero.leaks.any() and len(zero) == 3  # lm.1 through the lens is the last layer: the output, kept once
    assert abs(float(leak.estimate.iloc[0]) - 1.0) < 0.35 and (table.mde > 0).all()
    from probekit.studies.watermark.writeup import paired_verdicts

    v = paired_verdicts(table)
    assert list(v.word)[0] == "nothing detected" and v.reference_readings.iloc[0] == 2  # MDE below the planted 1.0
    assert set(v.word[1:]) == {"inconclusive"}  # nothing moved those rows at the smallest dose
