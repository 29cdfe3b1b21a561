"""The study protocol: one driver runs every registered study the same way; a study added at run time (one
module, one registry line) runs through ``probekit study NAME``; the calibration study's numbers."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from probekit.cli import main
from probekit.errors import InputError
from probekit.studies import REGISTRY, get_study, register_study
from probekit.studies.calibration import calibrate, section

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_study_added_at_run_time_runs_through_the_one_driver(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_study.py").write_text(textwrap.dedent('''
        import pandas as pd
        from probekit.studies import Outcome, Study, replace_section

        def _run(o):
            t = pd.DataFrame({"condition": ["positive", "control"], "detected": [True, False]})
            docs = None if o.small else (lambda md, img: [replace_section(md, "study:mine", "## Mine\\n\\n2 rows")])
            return Outcome(["positive detected; control not"], {"mine": t, "nothing": t.iloc[:0]}, 0.5, STUDY.out(o),
                           empty={"nothing": "no rows by design"}, write_docs=docs)

        STUDY = Study("mine", "an example", _run, lambda o: "mine-small" if o.small else "mine", flags=("small",))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY, "mine", "my_study")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("# Results\n\nkept\n")
    assert main(["study", "mine", "--out", str(tmp_path / "o"), "--docs", str(docs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"probekit study mine: checkpoints and tables go to {(tmp_path / 'o').resolve()}"
    assert out[1] == "positive detected; control not"
    assert (tmp_path / "o" / "mine.csv").read_text().splitlines() == ["condition,detected", "positive,True", "control,False"]
    assert not (tmp_path / "o" / "nothing.csv").exists() and any("no rows by design" in x for x in out)
    md = (docs / "results.md").read_text()
    assert md == "# Results\n\nkept\n\n<!-- study:mine -->\n## Mine\n\n2 rows\n<!-- /study:mine -->\n"
    assert main(["study", "mine", "--out", str(tmp_path / "o"), "--docs", str(docs)]) == 0  # rewritten, not appended
    assert (docs / "results.md").read_text() == md
    assert main(["study", "mine", "--full"]) == 2
    assert "--full is not an option of the mine study (it takes --small)" in capsys.readouterr().err
    sys.modules.pop("my_study", None)


def test_register_study_refuses_a_clash_and_an_unknown_name():
    with pytest.raises(InputError, match="already registered"):
        register_study("ladder", "somewhere.else")
    with pytest.raises(InputError, match="no study named 'nope'"):
        get_study("nope")


def test_calibration_study_holds_the_level_and_finds_the_planted_label():
    table = calibrate(draws=30)
    md = section(table, "probekit study calibration", 60.0)  # the docs section renders (no optional dependency)
    assert md.startswith("## Calibration of the verdict") and md.count("\n| 24 groups x 16, 8 points |") == 3
    t = table.set_index("condition")
    nulls = t.loc[[c for c in t.index if "null" in c]]
    assert (nulls.family_rate <= 0.1).all() and (nulls.row_rate <= 0.1).all(), nulls
    planted = t.loc["planted (points 4-7)"]
    assert 0.5 <= planted.detection_rate <= 0.95 and 0.75 <= planted.accuracy <= 0.9, planted
    assert 0.75 <= planted.stated_mde <= 0.9  # the stated 80%-power accuracy is where the planted rows sit


def test_a_family_registered_at_run_time_is_detected_and_covered(llava, monkeypatch):
    """register_family: detection picks it for its model type; clashes are refused; coverage derives from the registry."""
    from probekit import wrap
    from probekit.models import coverage
    from probekit.models.families import FAMILIES, Llava, register_family

    class MyLlava(Llava):
        name, model_types = "my_llava", ("my_llava",)

    monkeypatch.setattr("probekit.models.families.FAMILIES", dict(FAMILIES))  # leave the real registry as it was
    from probekit.models import families

    register_family(MyLlava())
    assert list(families.FAMILIES)[-2:] == ["my_llava", "generic"]
    points = wrap(llava.hf, llava.processor).points()
    monkeypatch.setattr(llava.hf.config, "model_type", "my_llava")
    m = wrap(llava.hf, llava.processor)
    assert m.family == "my_llava" and m.points() == points
    with pytest.raises(InputError, match="already registered"):
        register_family(MyLlava())

    class Clash(Llava):
        name, model_types = "clash", ("llava",)

    with pytest.raises(InputError, match=r"model types \['llava'\] are already claimed by \['llava'\]"):
        register_family(Clash())
    assert coverage._covered_from_registry()["my_llava"] == "my_llava"
    assert coverage.COVERED["blip-2"] == "blip2" and "blip_2" not in coverage.COVERED  # an alias is not a new type


def test_membership_study_finds_the_memorised_members_and_not_the_control(tmp_path, capsys):
    """The study added as one folder plus one registry line runs through the CLI's one driver: the memorising
    fine-tune is detected at the output and at a layer below it, the control detects no row, and the shifted
    split is called confounded before anything else."""
    assert main(["study", "membership", "--small", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    s = pd.read_csv(tmp_path / "summary.csv").set_index("condition")
    tuned, control, shifted = (s.loc[c] for c in ("memorising fine-tune", "control (saw neither set)",
                                                   "shifted split (guard)"))
    assert tuned.output_loss_detected and tuned.output_loss_auc > 0.85 and tuned.shallowest_detected_layer != "-"
    assert control.detected_rows == 0 and not control.confounded
    assert shifted.confounded and not tuned.confounded
    assert "memorising fine-tune, seed 0: Membership detected" in printed
    rows = pd.read_csv(tmp_path / "membership.csv")
    assert set(rows.condition) == set(s.index) and (rows.groupby("condition").size().reindex(s.index) == s["rows"]).all()
