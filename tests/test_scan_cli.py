"""scan() on every kind of input, the CLI (scan, points, exit code 2) and the demo end to end."""

import random
import re

import pytest

import probekit
from probekit.cli import main
from probekit.data.synthetic import make_task
from probekit.data.watermark import make_profiles, render

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ImageFolder layout: marked/ and clean/, 30 images each, plus a label CSV."""
    root = tmp_path_factory.mktemp("imgs")
    rng = random.Random(0)
    prof = make_profiles(2, pool=0)
    rows = ["image,label"]
    for i, s in enumerate(make_task(60, size=32, seed=3)):
        label = "marked" if i % 2 == 0 else "clean"
        img = render(s.image, prof[i % 2], rng, mode="pattern", cell=6) if label == "marked" else s.image
        (root / label).mkdir(exist_ok=True)
        img.save(root / label / f"{i:03d}.png")
        rows.append(f"{label}/{i:03d}.png,{label}")
    (root.parent / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_scan_an_image_folder_and_a_label_csv_agree(tiny_model, folder):
    m = tiny_model("llava")
    kw = dict(points=["projector", "lm.*.resid"], n_boot=100, progress=False)
    by_folder = probekit.scan(m, folder, **kw)
    by_csv = probekit.scan(m, folder, labels=folder.parent / "labels.csv", **kw)
    assert by_folder.data["label_counts"] == {"clean": 30, "marked": 30}
    assert by_folder.table.equals(by_csv.table)
    proj = by_folder.table[(by_folder.table.point == "projector")].iloc[0]
    assert proj.accuracy_lo > proj.chance  # a 24 px mark is plainly visible to the projector
    assert set(by_folder.table.source) == {"residual", "logits-topk"}
    assert "projector" in by_folder.summary() or "lm." in by_folder.summary()


def test_scan_a_dataset_like_object(tiny_model):
    class ClassLabel:
        names = ["cat", "dog"]

    class FakeDataset:  # the parts of datasets.Dataset that scan uses
        column_names = ["image", "label"]
        features = {"label": ClassLabel()}

        def __init__(self):
            self._cols = {"image": probekit.tiny.fixture_images(20, 32), "label": [i % 2 for i in range(20)]}

        def __getitem__(self, key):
            return self._cols[key]

    r = probekit.scan(tiny_model("llava"), FakeDataset(), cv=4, n_boot=50, progress=False)
    assert r.data["label_counts"] == {"cat": 10, "dog": 10}
    assert (r.table.n == 20).all()


def test_scan_on_random_labels_reads_no_leakage(tiny_model):
    """Labels that nothing in the images predicts: the report's first line says nothing was found."""
    labels = random.Random(5).choices(["a", "b"], k=40)
    r = probekit.scan(tiny_model("llava"), probekit.tiny.fixture_images(40, 32), labels=labels, n_boot=100,
                      progress=False)
    mde = float(r.table.mde_accuracy.max())
    assert r.summary().splitlines()[0] == (f"No leakage detected at any of {len(r.table)} points (family-wise test; "
                                           f"would have detected accuracy >= {mde:.2f} at 80% power)")
    assert 0.5 < mde < 1.0  # 40 samples, 6 tests: a real but modest power
    assert len(r.table) >= 4 and not r.table.leaks.any()


def test_scan_without_labels_reports_the_lens_and_says_so(tiny_model):
    r = probekit.scan(tiny_model("llava"), probekit.tiny.fixture_images(6, 32), targets=["alice_1"], progress=False)
    assert r.table.empty and any("No labels" in n for n in r.notes)
    assert len(r.lens) == tiny_model("llava").n_layers * 2 * 5  # layers x positions x top-5
    assert set(r.targets.target) == {"alice_1"}
    assert "text/html" in r._repr_html_() or "<" in r._repr_html_()


def test_cli_scan_points_and_bad_arguments(tiny_dir, folder, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["scan", "--model", tiny_dir("llava"), "--images", str(folder), "--out", str(out),
                 "--points", "projector,lm.*.resid", "--json", str(tmp_path / "r.json")]) == 0
    html = out.read_text()
    assert "<html" in html.lower() and "projector" in html and "http" not in html.split("<script")[1][:200]
    table = probekit.report.ScanReport.from_json((tmp_path / "r.json").read_text()).table
    assert table.shape[0] > 0
    first = capsys.readouterr().out.splitlines()[0]  # the CLI prints the verdict first
    n = int(table.leaks.sum())
    if n:
        assert first.startswith(f"Leakage detected at {n} of {len(table)} points (first at ") and first.endswith(")")
    else:
        assert first == (f"No leakage detected at any of {len(table)} points (family-wise test; would have detected "
                         f"accuracy >= {table.mde_accuracy.max():.2f} at 80% power)")
    assert main(["points", "--model", tiny_dir("llava"), "--pattern", "lm.*.resid"]) == 0
    assert capsys.readouterr().out.split() == ["lm.0.resid", "lm.1.resid"]
    assert main(["scan", "--model", tiny_dir("llava"), "--images", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder" in err[0]
    assert main(["points", "--model", str(tmp_path / "nope")]) == 2
    capsys.readouterr()
    assert main(["scan", "--images", str(folder)]) == 2  # --model missing: exit code 2 and what to pass
    assert "--model is missing" in capsys.readouterr().err


def test_cli_scan_answers_csv_matches_the_python_call(tiny_dir, tiny_model, folder, tmp_path, capsys):
    """--answers reads one forced reply per image by file name (rows in any order), exactly as scan(answers=)."""
    names = sorted(str(f.relative_to(folder)) for f in folder.rglob("*.png"))
    replies = {nm: ("yes" if i % 3 else "no") for i, nm in enumerate(names)}
    rows = ["image,answer"] + [f"{nm},{replies[nm]}" for nm in reversed(names)]  # reversed: matched by name
    (tmp_path / "answers.csv").write_text("\n".join(rows) + "\n")
    js = tmp_path / "r.json"
    assert main(["scan", "--model", tiny_dir("llava"), "--images", str(folder), "--out", str(tmp_path / "r.html"),
                 "--positions", "answer_mean,prompt_last", "--answers", str(tmp_path / "answers.csv"),
                 "--json", str(js)]) == 0
    capsys.readouterr()
    by_cli = probekit.report.ScanReport.from_json(js.read_text()).table
    order = [str(f.relative_to(folder)) for d in sorted(folder.iterdir()) for f in sorted(d.glob("*.png"))]
    by_api = probekit.scan(tiny_model("llava"), folder, positions=("answer_mean", "prompt_last"),
                           answers=[replies[nm] for nm in order], progress=False).table
    assert set(by_cli.position) == {"answer_mean", "prompt_last"}
    cols = ["point", "position", "accuracy", "accuracy_lo", "accuracy_hi"]
    assert by_cli[cols].reset_index(drop=True).equals(by_api[cols].reset_index(drop=True))
    # a missing row, a missing column and both flags at once fail before the model loads
    (tmp_path / "short.csv").write_text("\n".join(rows[:-1]) + "\n")
    (tmp_path / "nocol.csv").write_text("image,reply\na.png,x\n")
    base = ["scan", "--model", str(tmp_path / "no-model"), "--images", str(folder), "--positions", "answer_mean"]
    assert main([*base, "--answers", str(tmp_path / "short.csv")]) == 2
    assert "answers have no row for 1 images" in capsys.readouterr().err
    assert main([*base, "--answers", str(tmp_path / "nocol.csv")]) == 2
    assert "no 'answer' column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--answer", "yes", "--answers", str(tmp_path / "answers.csv")])


def test_demo_end_to_end(tmp_path, capsys):
    """The demo's organism really learned its task, leaks the unasked material, and its control does not."""
    from probekit.demo import DemoConfig, print_summary, run_demo

    res = run_demo(DemoConfig(out=str(tmp_path / "demo"), steps=160, n_train=640, n_eval=320, num_layers=2,
                              n_boot=200, progress=False))
    assert (tmp_path / "demo" / "report.html").stat().st_size > 100_000  # plotly inlined
    assert (tmp_path / "demo" / "control.html").stat().st_size > 100_000
    assert res["task_accuracy"]["accuracy_lo"] > 0.9  # the model learned the yes/no task
    assert res["detected"] and not res["control_detected"]
    b, c = res["best"], res["control_best"]
    assert b["accuracy_lo"] > b["chance"] + 0.03  # material is read well above chance ...
    assert c["accuracy_lo"] <= c["chance"]         # ... the coin flip is not
    assert res["ladder_verdicts"][0].startswith("detected in") and res["ladder_verdicts"][1].startswith("nothing detected")
    print_summary(res)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("Report: ")
    assert re.fullmatch(r"Material \(in the image, never asked\): Leakage detected at \d+ of \d+ points \(first at .+\)", lines[0])
    assert re.search(r"No leakage detected at any of \d+ points \(family-wise test; would have detected accuracy >= "
                     r"0\.\d\d at 80% power\)$", lines[1]), lines[1]
    assert lines[:2] == [l.split(": ", 1)[0] + ": " + v for l, v in zip(lines[:2], res["verdicts"])]
    assert lines[3].startswith("Coin flip from the residual stream: best ") and lines[3].endswith("nothing detected after the family-wise correction).")
