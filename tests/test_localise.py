"""The fixed-sequence localisation of a detected leak (``probekit.readout.localise``): its level under a partial
null (the output leaks, no layer below does), its stopping rule, its gate, and its errors."""

import numpy as np
import pandas as pd
import pytest

from probekit.errors import InputError
from probekit.readout.localise import PATCHED, localise, lowest

POINTS = ["lm.0.resid", "lm.1.resid", "lm.2.resid", "lm.3.resid"]


def _table(p_by_point: dict, output_detected: bool = True) -> pd.DataFrame:
    rows = [{"point": "logits", "source": "output minus base", "p_value": 0.001, "detected": output_detected}]
    for point, ps in p_by_point.items():
        rows += [{"point": point, "source": src, "p_value": p, "detected": False} for src, p in zip(PATCHED, ps)]
    return pd.DataFrame(rows)


def test_a_partial_null_holds_its_level():
    """The output leaks (the gate is open) and no layer below does: over 4,000 draws of uniform p-values, some
    pairs correlated as the two directions of one layer are, a layer is named at most at the level."""
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(4000):
        u = rng.uniform(size=(3, 2))
        u[:, 1] = np.where(rng.uniform(size=3) < 0.5, u[:, 0], u[:, 1])  # the two directions often agree
        loc = localise(_table(dict(zip(POINTS[:3], u)), True), last="lm.3.resid")
        hits.append(loc.localised.any())
    rate = float(np.mean(hits))
    assert rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 4000), rate
    assert rate > 0.02  # the test is used, not idle: close to its level where one direction alone is tested


def test_the_sequence_runs_from_the_deepest_layer_down_and_stops_at_the_first_failure():
    t = _table({"lm.3.resid": (0.9, 0.9), "lm.2.resid": (0.01, 0.3), "lm.1.resid": (0.2, 0.04),
                "lm.0.resid": (0.001, 0.001)})
    loc = localise(t, last="lm.3.resid")
    assert loc.point.tolist() == ["lm.2.resid", "lm.1.resid", "lm.0.resid"]  # the last layer is the gate's
    assert loc.p.round(3).tolist() == [0.02, 0.08, 0.002]  # a layer's smaller p, doubled
    assert loc.localised.tolist() == [True, False, False] and loc.tested.tolist() == [True, True, False]
    assert lowest(loc) == "lm.2.resid"  # lm.0 is never tested, however small its p: the order was set first
    # without `last`, the last layer opens the sequence, and its p of 1.0 (0.9 doubled, capped) closes it
    assert lowest(localise(t)) is None and localise(t).p.iloc[0] == 1.0


def test_nothing_is_localised_where_the_verdict_detected_nothing():
    loc = localise(_table({"lm.1.resid": (0.001, 0.001), "lm.0.resid": (0.001, 0.001)}, output_detected=False))
    assert not loc.tested.any() and lowest(loc) is None and loc.p.tolist() == [0.002, 0.002]


def test_bad_input_is_named():
    with pytest.raises(InputError, match=r"lacks \['p_value'\]"):
        localise(pd.DataFrame({"point": [], "source": [], "detected": []}))
    with pytest.raises(InputError, match="alpha must lie in"):
        localise(_table({}), alpha=1.5)
    assert localise(_table({})).empty  # no patching rows (no base model): nothing to localise


def test_the_membership_summary_says_where_and_how_far_the_sequence_went():
    from probekit.report.membership_report import MembershipReport

    def report(p_lm1):
        t = _table({"lm.2.resid": (0.001, 0.001), "lm.1.resid": p_lm1, "lm.0.resid": (0.01, 0.01)})
        t = t.assign(score="loss", auc=0.6, auc_lo=0.55, auc_hi=0.65, tpr_at_1fpr=0.02, p_adjusted=t.p_value * 10,
                     mde_auc=0.64)
        rep = MembershipReport(t, settings={"last_point": "lm.2.resid"})
        html = rep.to_html()  # the sequence as a table of the page, in the order tested
        seq = html.split("fixed sequence from the output down</h2>")[1].split("<h2>")[0]
        assert "lm.2.resid" not in seq and seq.index("lm.1.resid</td>") < seq.index("lm.0.resid</td>")
        return rep.summary().splitlines()[1]

    assert report((0.3, 0.5)) == ("Not localised below the last layer (patching at lm.1.resid does not move the member "
                                  "/ non-member gap detectably; fixed sequence from the output down: lm.1.resid p 0.6; "
                                  "family-wise 0.05)")
    assert report((0.02, 0.5)).startswith("Localised: part of the leak is formed by lm.0.resid (") and \
        "lm.1.resid p 0.04, lm.0.resid p 0.02;" in report((0.02, 0.5))
