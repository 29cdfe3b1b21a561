"""Every script in examples/ runs and prints what it promises."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name, argv, capsys):
    old = sys.argv
    sys.argv = [name] + argv
    try:
        module = runpy.run_path(str(EXAMPLES / name))
    finally:
        sys.argv = old
    return module, capsys.readouterr().out


def test_collect_to_disk(tmp_path, capsys):
    mod, out = _run("collect_to_disk.py", [], capsys)
    store = mod["main"](["--out", str(tmp_path / "acts"), "--n", "40"])
    assert len(store) == 40 and (tmp_path / "acts" / "index.json").exists()
    assert "lm.1.resid (40, 2, 64)" in capsys.readouterr().out


def test_logit_lens(capsys):
    mod, _ = _run("logit_lens.py", [], capsys)
    top, ranks = mod["main"](["--target", "bob_42"])
    assert set(top["rank"]) == {1, 2, 3} and (ranks.rank_median >= 1).all()


def test_probe_layers(capsys):
    mod, _ = _run("probe_layers.py", [], capsys)
    table = mod["main"]()
    # the mark is plainly visible: the image-token mean of the projector output must reveal it
    assert set(table.position) == {"last", "image_mean"}  # names come from the store
    row = table[(table.point == "projector")].iloc[0]
    assert row.accuracy >= 0.75 and row.accuracy_lo > row.chance + 0.15


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_tested(script):
    tested = {"collect_to_disk.py", "logit_lens.py", "probe_layers.py", "scan_report.py", "remove_direction.py"}
    assert script in tested, f"examples/{script} has no test"
