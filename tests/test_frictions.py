"""Frictions a new user hit (issue 11): tables as inputs, one `prompts` keyword, a README that runs,
clear errors offline, weight-sensitive fingerprints, light start-up, quiet progress in logs,
notebooks whose figures show in static views."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

import probekit
from probekit.cli import main
from probekit.errors import ImageError, InputError, LabelError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
N = 24


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """N PNG files and their labels ("a"/"b" alternating)."""
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, im in enumerate(probekit.tiny.fixture_images(N, 32, seed=3)):
        paths.append(str(d / f"img{i}.png"))
        im.save(paths[-1])
    return paths, ["a" if i % 2 else "b" for i in range(N)]


# ---------------------------------------------------------------- DataFrames and datasets


def test_scan_a_dataframe_with_named_image_and_label_columns(tiny_model, files):
    paths, labels = files
    df = pd.DataFrame({"picture": paths, "y": labels, "other": range(N)})
    r = probekit.scan(tiny_model("llava"), df, image_column="picture", label_column="y", cv=3, n_boot=50,
                      progress=False, points="lm.*.resid")
    assert r.data["n_images"] == N and r.data["label_counts"] == {"b": N // 2, "a": N // 2}
    assert "DataFrame" in r.data["source"] and "'picture'" in r.data["source"]
    assert r.table["accuracy"].between(0, 1).all() and len(r.table) > 0


def test_labels_given_as_a_dataframe_use_its_label_column_not_its_column_names(tiny_model, files):
    paths, labels = files
    r = probekit.scan(tiny_model("llava"), paths, labels=pd.DataFrame({"image": paths, "label": labels}), cv=3,
                      n_boot=50, progress=False, topk=None)
    assert r.data["label_counts"] == {"b": N // 2, "a": N // 2}
    # a DataFrame of images with default column names, labels named by column
    r2 = probekit.scan(tiny_model("llava"), pd.DataFrame({"image": paths, "label": labels}), cv=3, n_boot=50,
                       progress=False, topk=None)
    assert r2.table[["accuracy", "mi_bits"]].equals(r.table[["accuracy", "mi_bits"]])


def test_a_datasets_dataset_with_class_labels(tiny_model):
    import datasets
    imgs = probekit.tiny.fixture_images(N, 32, seed=4)
    ds = datasets.Dataset.from_dict({"img": imgs, "kind": [i % 2 for i in range(N)]})
    ds = ds.cast_column("img", datasets.Image()).cast_column("kind", datasets.ClassLabel(names=["cat", "dog"]))
    r = probekit.scan(tiny_model("llava"), ds, image_column="img", label_column="kind", cv=3, n_boot=50,
                      progress=False, topk=None)
    assert r.data["label_counts"] == {"cat": N // 2, "dog": N // 2}
    # undecoded image cells ({"bytes", "path"}, as read from parquet) and labels= naming a column
    raw = ds.cast_column("img", datasets.Image(decode=False))
    assert isinstance(raw[0]["img"], dict)
    r2 = probekit.scan(tiny_model("llava"), raw, labels="kind", cv=3, n_boot=50, progress=False, topk=None)
    assert r2.table["accuracy"].tolist() == r.table["accuracy"].tolist()
    assert r2.data["label_counts"] == {"cat": N // 2, "dog": N // 2}


def test_table_input_errors_name_the_columns(files):
    from probekit.data.sources import resolve_images

    paths, labels = files
    df = pd.DataFrame({"picture": paths, "y": labels})
    with pytest.raises(ImageError) as e:
        resolve_images(df)
    assert "picture" in str(e.value) and "image_column=" in e.value.fix
    with pytest.raises(LabelError) as e:
        resolve_images(paths, labels=pd.DataFrame({"u": labels, "v": labels}))
    assert "'u'" in str(e.value) and "label_column=" in e.value.fix


# ---------------------------------------------------------------- one `prompts` keyword


def test_prompts_keyword_in_scan_and_collect_with_prompt_still_accepted(tiny_model, files):
    paths, labels = files
    m = tiny_model("llava")
    kw = dict(labels=labels, cv=3, n_boot=20, progress=False, topk=None, points="lm.1.resid")
    new = probekit.scan(m, paths, prompts="Is it red?", **kw)
    old = probekit.scan(m, paths, prompt="Is it red?", **kw)
    assert new.settings["prompts"] == old.settings["prompts"] == ["Is it red?"]
    assert new.table["accuracy"].tolist() == old.table["accuracy"].tolist()
    with pytest.raises(InputError, match="both prompts= and prompt="):
        probekit.scan(m, paths, prompts="a", prompt="b", **kw)
    s = probekit.collect(m, paths[:2], prompts="Is it red?", progress=False)
    assert s.meta["prompts"] == ["Is it red?"]


@pytest.mark.parametrize("flag", ["--prompts", "--prompt"])
def test_cli_prompts_flag_and_its_old_spelling(tiny_dir, files, tmp_path, flag, capsys):
    paths, _ = files
    out = tmp_path / "store"
    assert main(["collect", "--model", tiny_dir("llava"), "--images", str(Path(paths[0]).parent), "--out", str(out),
                 flag, "Is it red?", "--points", "lm.1.resid"]) == 0
    assert probekit.ActivationStore.open(out).meta["prompts"] == ["Is it red?"]


def test_readme_and_notebooks_spell_prompts_one_way():
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        texts[nb.name] = "".join(c.source for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
    for name, text in texts.items():
        assert not re.search(r"\bprompt=", text), name
    assert "--prompts" in (ROOT / "README.md").read_text()


# ---------------------------------------------------------------- README, missing --model, offline


def _readme_script() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- script-example -->\n```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2, "the 'In a script' section has two marked python blocks"
    return "\n".join(blocks)


def test_readme_script_section_runs_offline_as_written(tmp_path):
    """The README's script runs as written, twice in a row (it writes to a temporary folder, nothing in the
    working directory), and prints what the README says it prints: the colour every image shows is detected,
    the coin flip none shows is not."""
    code = _readme_script()
    first = code.index("probekit.tiny.build(")
    assert first < code.index("llava-hf/llava-1.5-7b-hf")  # the offline line comes first
    said = re.findall(r"^print\(.*?\)\s+# (.*)$", code, flags=re.M)
    assert len(said) == 2 and said[0].startswith("Leakage detected") and said[1].startswith("No leakage detected")
    code += "\nassert store['lm.1.resid'].shape == (60, 2, 64), store['lm.1.resid'].shape\n" \
            "assert len(report.table) > 0 and erased['lm.1.resid'].shape == (60, 64)\n" \
            "import os; assert os.path.isfile(f'{work}/report.html') and os.path.isdir(f'{work}/acts')\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.splitlines() == said
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory


@pytest.mark.parametrize("command", ["points", "scan", "collect"])
def test_cli_without_model_says_what_to_pass(command, tmp_path, capsys):
    extra = {"points": [], "scan": ["--images", str(tmp_path)], "collect": ["--images", str(tmp_path), "--out", "x"]}
    assert main([command, *extra[command]]) == 2
    err = capsys.readouterr().err
    assert f"probekit {command}: error: --model is missing" in err
    assert "checkpoint directory" in err and "probekit.tiny.build" in err and "hub id" in err.lower()


def test_hub_id_while_offline_fails_at_once_and_says_offline(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        probekit.load("probekit-tests/no-such-vlm")
    assert time.perf_counter() - t0 < 2.0
    assert "offline mode is on" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    assert "local checkpoint directory" in e.value.fix and "download" in e.value.fix
    assert main(["points", "--model", "probekit-tests/no-such-vlm"]) == 2
    assert "offline mode is on" in capsys.readouterr().err


# ---------------------------------------------------------------- fingerprints and compare titles


def test_fingerprint_changes_with_the_weights(tiny_dir):
    from probekit.data.synthetic import make_task
    from probekit.organisms.finetune import finetune

    base, tuned = probekit.load(tiny_dir("llava")), probekit.load(tiny_dir("llava"))
    assert base.fingerprint() == tuned.fingerprint()  # same weights, same fingerprint
    finetune(tuned, make_task(8, seed=0), steps=2, batch_size=4, lr=1e-3, progress=False)
    assert tuned.fingerprint() != base.fingerprint()
    nudged = probekit.load(tiny_dir("llava"))
    name, p = list(nudged.hf.named_parameters())[-3]
    with torch.no_grad():
        p.view(-1)[p.numel() // 2] += 1e-3  # one value, slightly
    assert nudged.fingerprint() != base.fingerprint(), name


def _report(model: str, acc: float) -> "probekit.ScanReport":
    t = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last", "accuracy": [acc, acc + 0.1],
                      "accuracy_lo": [acc - 0.05, acc + 0.05], "accuracy_hi": [acc + 0.05, acc + 0.15], "chance": 0.5})
    return probekit.ScanReport(t, settings={"model": model, "model_fingerprint": model[-4:] * 4})


def test_compare_titles_say_which_is_base_and_which_tuned():
    c = probekit.compare(_report("/ckpt/llava-7b", 0.6), _report("/ckpt/llava-7b-ft", 0.8))
    html = c.to_html()
    assert "probekit comparison: base vs tuned" in html
    assert "base: /ckpt/llava-7b (fingerprint" in html and "tuned: /ckpt/llava-7b-ft (fingerprint" in html
    assert c.figure().layout.title.text.endswith("base vs tuned")
    named = probekit.compare(_report("a", 0.6), _report("b", 0.8), names=("7b", "7b-ft"))
    assert named.figure().layout.title.text == "Probe accuracy: 7b (base) vs 7b-ft (tuned)"
    assert "7b (base): settings and data" in named.to_html()


# ---------------------------------------------------------------- start-up


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


HEAVY = {"torch", "transformers", "sklearn", "plotly", "nnsight", "transformer_lens", "pandas", "scipy"}


def test_import_probekit_and_cli_help_load_no_heavy_module():
    assert not HEAVY & _modules_after("import probekit; probekit.scan; probekit.errors.InputError")
    help_code = ("from probekit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
                 "    assert e.code == 0")
    assert not HEAVY & _modules_after(help_code)
    # the names still resolve on first use
    assert "torch" in _modules_after("import probekit; probekit.load; probekit.Model")


# ---------------------------------------------------------------- progress in logs


def test_progress_bars_write_few_lines_when_stderr_is_not_a_terminal(tiny_model, files, monkeypatch, capsys):
    collect_mod = importlib.import_module("probekit.hooks.collect")  # the attribute of that name is the function

    real = collect_mod._forward

    def slow(*a, **k):
        time.sleep(0.05)
        return real(*a, **k)

    monkeypatch.setattr(collect_mod, "_forward", slow)
    paths, _ = files
    capsys.readouterr()
    probekit.collect(tiny_model("llava"), paths[:20], batch_size=1, progress=True)  # ~1 s of bar updates
    err = capsys.readouterr().err
    lines = [x for x in re.split(r"[\r\n]", err) if x.strip()]
    assert 1 <= len(lines) <= 3, lines
    assert "20/20" in lines[-1]  # the final count stays in the log


def test_progress_bar_redraws_every_few_seconds_in_logs_and_live_in_a_terminal(monkeypatch):
    from probekit import _progress

    monkeypatch.setattr(_progress, "interactive", lambda: False)
    bar = _progress.progress_bar(total=3, desc="x")
    assert bar.mininterval >= 5 and bar.leave
    bar.close()
    monkeypatch.setattr(_progress, "interactive", lambda: True)
    bar = _progress.progress_bar(total=3, desc="x")
    assert bar.mininterval < 1
    bar.close()


def test_study_shows_progress_and_says_where_it_wrote(monkeypatch, tmp_path, capsys):
    import probekit.studies.memorization.study as mem

    seen = {}

    def fake(cfg):
        seen.update(progress=cfg.progress, verbose=cfg.verbose, out=cfg.out)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame({"model": ["base"], "probe_acc": [0.5]})
        scan = pd.DataFrame({"point": ["lm.0.resid"], "position": "last", "accuracy": [0.5], "accuracy_lo": [0.4],
                             "accuracy_hi": [0.6], "chance": 0.5})  # the verdict lines read the scans
        return {"table": table, "gradient_cosine_summary": pd.DataFrame({"p": [0.0], "cos_mean": [0.1]}),
                "reports": {("base", 0): probekit.ScanReport(scan)}, "seconds": 1.0}

    monkeypatch.setattr(mem, "run_memorization", fake)
    assert main(["study", "memorization", "--out", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert seen["progress"] and seen["verbose"]
    where = str((tmp_path / "study").resolve())
    assert out.splitlines()[0] == f"probekit study memorization: checkpoints and tables go to {where}"
    wrote = [Path(x[len("wrote "):]) for x in out.splitlines() if x.startswith("wrote ")]
    assert {p.name for p in wrote} == {"table.csv", "gradient_cosine_summary.csv"} and all(p.is_file() for p in wrote)
    assert out.rstrip().endswith(f"checkpoints and tables in {where})")


def test_dev_extra_has_ipywidgets_for_notebook_bars():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    dev = [r.strip().split(">")[0].split("=")[0] for r in cfg["options.extras_require"]["dev"].split("\n") if r.strip()]
    assert "ipywidgets" in dev


# ---------------------------------------------------------------- notebooks in static views


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_executed_with_static_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "commit the notebook executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    figures = [o for c in code for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, "each notebook shows at least one figure"
    for i, o in enumerate(figures):
        html = o["data"].get("text/html", "")
        assert "Plotly.newPlot" in html, f"figure {i} has no static HTML"
    # plotly.js itself is inlined (no CDN) in the first figure, so the HTML works offline
    first = figures[0]["data"]["text/html"]
    assert len(first) > 1_000_000 and not re.search(r"<script[^>]*src=", first)
    assert sum(len(o["data"]["text/html"]) > 1_000_000 for o in figures) == 1  # once, not per figure
