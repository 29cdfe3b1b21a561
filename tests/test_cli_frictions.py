"""Command-line frictions a new user hit (issue 22): `probekit scan` checks every input before it loads
the model (and says so with the library's own error types), label CSVs name their columns, rows
naming absent images are an error unless allowed, --help shows what is required and every default,
and error text shows plain values, never numpy reprs."""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import probekit
from probekit.cli import _check_scan_inputs, _parser, main
from probekit.data.sources import csv_column_for_folder, resolve_images
from probekit.errors import ImageError, InputError, LabelError, PositionError, ProbekitWarning, plain

pytestmark = pytest.mark.usefixtures("one_thread")
N = 12  # images in the folder: img00.png .. img11.png, labels "a"/"b" alternating


def _rows(names, column="label", key="image", labels=None):
    labels = labels or ["ab"[i % 2] for i in range(len(names))]
    return f"{key},{column}\n" + "".join(f"{nm},{lab}\n" for nm, lab in zip(names, labels))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder of N PNGs, a copy with one truncated PNG, and label / answer CSVs of every bad kind."""
    root = tmp_path_factory.mktemp("frictions")
    imgs, bad = root / "imgs", root / "badimg"
    imgs.mkdir()
    bad.mkdir()
    names = [f"img{i:02d}.png" for i in range(N)]
    for nm, im in zip(names, probekit.tiny.fixture_images(N, 32, seed=1)):
        im.save(imgs / nm)
        im.save(bad / nm)
    (bad / names[-1]).write_bytes((bad / names[-1]).read_bytes()[:60])  # a cut file: header only
    extra = names + [f"gone{i}.png" for i in range(5)]  # 5 rows whose images are not in the folder
    csvs = {
        "good": _rows(names),
        "renamed": _rows(names, column="cls", key="file"),
        "extra": _rows(extra),
        "short": _rows(names[:8]),  # 4 images without a row
        "row-order-short": "label\n" + "".join(f"{'ab'[i % 2]}\n" for i in range(N - 2)),
        "one-class": _rows(names, labels=["same"] * N),
        "lopsided": _rows(names, labels=["a"] * (N - 2) + ["b"] * 2),  # 2 of class b: cv=5 cannot work
        "answers": _rows(names, column="answer", labels=["yes", "no"] * (N // 2)),
        "answers-extra": _rows(extra, column="answer", labels=["yes"] * len(extra)),
        "answers-nocol": _rows(names, column="reply"),
    }
    for name, text in csvs.items():
        (root / f"{name}.csv").write_text(text)
    return root


@pytest.fixture
def loads(monkeypatch):
    """Records every probekit.load call and refuses it: the tests below must fail before the model loads."""
    calls = []

    def load(*a, **k):
        calls.append(a)
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(probekit, "load", load)
    return calls


def _scan_argv(data, *extra, images="imgs"):
    return ["scan", "--model", str(data / "no-model"), "--images", str(data / images), "--out",
            str(data / "r.html"), *extra]


# (arguments, exception class, words of the problem); each must be reported before the model loads
BAD = {
    "label column missing": (["--labels", "renamed.csv"], LabelError, ["no 'label' column", "cls"]),
    "image column missing": (["--labels", "good.csv", "--image-column", "path"], LabelError,
                             ["no 'path' column", "image"]),
    "rows naming absent images": (["--labels", "extra.csv"], LabelError,
                                  ["5 rows", "not in the folder", "gone0.png", "gone1.png", "gone2.png"]),
    "images without a row": (["--labels", "short.csv"], LabelError,
                             ["no row for 4 images", "img08.png", "img09.png", "img10.png"]),
    "row-order count mismatch": (["--labels", "row-order-short.csv"], LabelError, [f"{N} images but {N - 2} labels"]),
    "corrupt image": (["--labels", "good.csv", "IMAGES=badimg"], ImageError, [f"img{N - 1:02d}.png", "not a readable"]),
    "single class": (["--labels", "one-class.csv"], LabelError, ["single class", "'same'"]),
    "too few of a class for the folds": (["--labels", "lopsided.csv"], LabelError, ["cv=5", "only 2 samples"]),
    "answers column missing": (["--answers", "answers-nocol.csv"], LabelError, ["no 'answer' column"]),
    "answers naming absent images": (["--answers", "answers-extra.csv"], LabelError, ["5 rows", "gone0.png"]),
    "label column without labels": (["--label-column", "cls"], InputError, ["--label-column", "no --labels"]),
    "unknown position": (["--positions", "nowhere"], PositionError, ["nowhere"]),
}


def _argv(data, args):
    images = next((a.split("=", 1)[1] for a in args if a.startswith("IMAGES=")), "imgs")
    rest = [str(data / a) if a.endswith(".csv") else a for a in args if not a.startswith("IMAGES=")]
    return _scan_argv(data, *rest, images=images)


@pytest.mark.parametrize("case", list(BAD))
def test_scan_reports_bad_input_before_loading_the_model(data, loads, case, capsys):
    args, cls, words = BAD[case]
    argv = _argv(data, args)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probekit scan: error: "), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert "np." not in err[0]
    assert loads == []  # the model was never loaded
    with pytest.raises(cls) as info:  # the exact probekit error type, as the library raises it
        _check_scan_inputs(_parser().parse_args(argv))
    assert type(info.value) is cls and info.value.fix


@pytest.mark.parametrize("case, kwargs", [
    ("label column missing", dict(labels="renamed.csv")),
    ("images without a row", dict(labels="short.csv")),
    ("row-order count mismatch", dict(labels="row-order-short.csv")),
    ("corrupt image", dict(labels="good.csv", images="badimg")),
    ("single class", dict(labels="one-class.csv")),
    ("too few of a class for the folds", dict(labels="lopsided.csv")),
])
def test_the_cli_raises_what_the_library_raises(data, no_forward, case, kwargs):
    """The CLI's checks are the library's: probekit.scan refuses the same input with the same type."""
    with pytest.raises(BAD[case][1]) as lib:
        probekit.scan(no_forward, data / kwargs.get("images", "imgs"), labels=data / kwargs["labels"], progress=False)
    with pytest.raises(BAD[case][1]) as cli:
        _check_scan_inputs(_parser().parse_args(_argv(data, BAD[case][0])))
    assert type(lib.value) is type(cli.value)


def test_label_and_image_columns_are_named_by_options(data, tiny_dir, tmp_path, capsys):
    js = tmp_path / "r.json"
    assert main(["scan", "--model", tiny_dir("llava"), "--images", str(data / "imgs"),
                 "--out", str(tmp_path / "r.html"), "--labels", str(data / "renamed.csv"),
                 "--label-column", "cls", "--image-column", "file",
                 "--points", "lm.1.resid", "--positions", "last", "--cv", "3", "--json", str(js)]) == 0
    capsys.readouterr()
    data_ = probekit.report.ScanReport.from_json(js.read_text()).data
    assert data_["label_counts"] == {"a": N // 2, "b": N // 2}
    assert data_["n_images"] == N and "renamed.csv" in data_["labels"]
    # the library takes the same names
    src = resolve_images(data / "imgs", data / "renamed.csv", label_column="cls", image_column="file")
    assert src.labels == ["ab"[i % 2] for i in range(N)]


# ---------------------------------------------------------------- rows and images that do not match


def test_rows_naming_absent_images_are_skipped_only_when_allowed(data, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(probekit, "load", lambda *a, **k: "model")
    monkeypatch.setattr(probekit, "scan", lambda model, src, **kw: seen.update(src=src, kw=kw))  # None: prints nothing
    argv = _scan_argv(data, "--labels", str(data / "extra.csv"), "--answers", str(data / "answers-extra.csv"))
    assert main(argv) == 2 and not seen
    assert main([*argv, "--allow-missing-images"]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("probekit scan: warning: ")]
    assert len(warned) == 2  # one for the label CSV, one for the answers CSV
    assert all("5 rows" in w and "'gone0.png', 'gone1.png', 'gone2.png' and 2 more" in w for w in warned)
    src = seen["src"]
    assert len(src.images) == len(src.labels) == len(seen["kw"]["answers"]) == N
    assert [Path(p).name for p in src.images] == [f"img{i:02d}.png" for i in range(N)]


def test_the_library_warns_about_rows_naming_absent_images(data):
    with pytest.warns(ProbekitWarning, match=r"5 rows .* not in the folder: 'gone0.png'"):
        src = resolve_images(data / "imgs", data / "extra.csv")
    assert len(src.labels) == N
    with pytest.raises(LabelError, match="5 rows"):
        resolve_images(data / "imgs", data / "extra.csv", missing_images="error")
    with pytest.raises(LabelError, match="5 rows"):
        csv_column_for_folder(data / "answers-extra.csv", data / "imgs", "answer", "answer", missing_images="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(resolve_images(data / "imgs", data / "good.csv").labels) == N  # a matching CSV: no warning


def test_images_without_a_row_name_the_first_few_files(data):
    with pytest.raises(LabelError) as info:
        resolve_images(data / "imgs", data / "short.csv")
    assert "no row for 4 images" in info.value.problem and "short.csv" in info.value.problem
    assert "'img08.png', 'img09.png', 'img10.png' and 1 more" in info.value.problem


def test_rows_that_disagree_about_one_image_are_an_error(data, tmp_path):
    (tmp_path / "twice.csv").write_text(_rows([f"img{i:02d}.png" for i in range(N)] + ["img00.png"],
                                              labels=["ab"[i % 2] for i in range(N)] + ["b"]))
    with pytest.raises(LabelError, match="disagree for 1 images: 'img00.png'"):
        resolve_images(data / "imgs", tmp_path / "twice.csv")


def test_collect_checks_the_images_before_loading_the_model(data, loads, tmp_path, capsys):
    assert main(["collect", "--model", "m", "--images", str(data / "badimg"), "--out", str(tmp_path / "s")]) == 2
    assert "not a readable image" in capsys.readouterr().err and loads == []
    (tmp_path / "empty").mkdir()
    assert main(["collect", "--model", "m", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "s")]) == 2
    assert "holds no image files" in capsys.readouterr().err and loads == []
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- --help


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = _parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", ["scan", "points", "collect"])
def test_help_shows_model_as_required(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    usage = out.split("\n\n")[0]
    assert re.search(r"(?<!\[)--model MODEL", usage) and "[--model" not in usage, usage
    assert re.search(r"--model MODEL\s+checkpoint directory or hub id \(required\)", out)


def test_every_option_says_what_it_does_and_its_default():
    for command, sub in _subparsers().items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            flag = action.option_strings[0]
            assert action.help, f"probekit {command} {flag} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert str(action.default) in action.help, f"probekit {command} {flag}: default {action.default!r}"


def test_missing_model_and_other_arguments_are_named_together(capsys):
    assert main(["collect"]) == 2
    err = capsys.readouterr().err
    assert "probekit collect: error: --model is missing" in err and "--images" in err and "--out" in err


# ---------------------------------------------------------------- plain values in error text


def _message(fn) -> str:
    with pytest.raises(probekit.errors.ProbekitError) as info:
        fn()
    return str(info.value)


def test_error_messages_show_plain_values_not_numpy_reprs(no_forward):
    from probekit.readout._data import encode_labels, make_folds
    from probekit.steering.inputs import codes

    single = [
        _message(lambda: encode_labels(np.array(["same"] * 4))),
        _message(lambda: codes(np.array(["same"] * 4), 4)),
        _message(lambda: probekit.scan(no_forward, probekit.tiny.fixture_images(6, 32), labels=np.array([1] * 6),
                                       progress=False)),
    ]
    assert "single class ('same')" in single[0] and "single class ('same')" in single[1]
    assert "single class (1)" in single[2]
    mixed = [
        _message(lambda: encode_labels(np.array([1, "a"] * 3, dtype=object))),
        _message(lambda: codes(np.array([1, "a"] * 3, dtype=object), 6)),  # was a bare TypeError
        _message(lambda: make_folds(np.array([0, 1] * 3), cv=np.int64(1))),
        _message(lambda: encode_labels(np.array([True] * 4))),
    ]
    assert "mix types" in mixed[0] and "mix types" in mixed[1]
    assert "got 1" in mixed[2] and "single class (True)" in mixed[3]
    for text in single + mixed:
        assert "np." not in text, text


def test_plain():
    assert plain(np.str_("a")) == "a" and type(plain(np.str_("a"))) is str
    assert plain([np.int64(1), (np.float64(0.5), "x")]) == [1, (0.5, "x")]
    assert plain({np.str_("k"): np.array([1, 2])}) == {"k": [1, 2]}
    assert repr(plain([np.int64(3)])) == "[3]"


def test_studies_come_from_the_registry_and_the_docs_list_is_generated(capsys):
    """The CLI's study choices and docs/studies.md are the registry; a flag a study does not take is refused."""
    from probekit.studies import REGISTRY, get_study, markdown_list

    text = (Path(__file__).resolve().parents[1] / "docs" / "studies.md").read_text()
    listed = text.split("<!-- studies:list -->\n")[1].split("\n<!-- /studies:list -->")[0]
    assert listed == markdown_list()
    choices = next(a for a in _parser()._subparsers._group_actions[0].choices["study"]._actions if a.dest == "name").choices
    assert list(choices) == list(REGISTRY) and all(get_study(n).name == n for n in REGISTRY)
    assert main(["study", "memorization", "--small"]) == 2  # memorization takes --full only
    err = capsys.readouterr().err
    assert "--small is not an option of the memorization study (it takes --full)" in err
