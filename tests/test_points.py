"""Hook points as values: Point.parse is the one name parser, every store carries Point info."""

import ast
import json
import math
import pathlib
import re
import warnings

import pytest
import torch

import probekit
from probekit.hooks.points import Point
from probekit.hooks.store import ActivationStore
from probekit.models import coverage
from probekit.tiny import zoo
from probekit.readout._data import parse_kind, parse_layer

FAMILIES = ["llava", "qwen2_vl", "mllama", "blip2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_parse_round_trips_every_point_of_a_family(tiny_model, family):
    model = tiny_model(family)
    names = model.points()
    assert len(names) >= 8
    for name in names:
        parsed, full = Point.parse(name), Point.of(model, name)
        assert parsed.name == name == full.name
        # what the name says agrees with what the model says
        assert (parsed.side, parsed.layer, parsed.kind, parsed.sequence) == (full.side, full.layer, full.kind, full.sequence)
        assert full.module == model.target(name).path and full.mode == model.target(name).mode
        assert Point.from_info(name, full.info()) == full
        assert Point.parse(f"{name}@last") == parsed
        # the name is rebuilt from its parts
        rebuilt = f"{parsed.side}.{parsed.layer}.{parsed.kind}" if parsed.layer is not None else name
        assert rebuilt == name
    widths = {n: Point.of(model, n).width for n in names}
    assert all(widths[n] == model.d_model for n in names if Point.parse(n).side in ("lm", "projector") and n != "logits")
    assert widths["logits"] == model.unembed.weight.shape[0]
    vision = [n for n in names if Point.parse(n).side == "vision"]
    assert vision and len({widths[n] for n in vision}) == 1 and widths[vision[0]] > 0  # recorded widths: below


def test_parse_the_vocabulary_and_names_outside_it():
    cases = {
        "lm.12.mlp": ("lm", 12, "mlp", "lm"),
        "lm.embed": ("lm", None, "embed", "lm"),
        "lm.norm": ("lm", None, "norm", "lm"),
        "logits": ("lm", None, "logits", "lm"),
        "projector": ("projector", None, "projector", "vision"),
        "vision.4.resid": ("vision", 4, "resid", "vision"),
        "qformer.1.xattn": ("qformer", 1, "xattn", "vision"),
        "lm.3.xattn": ("lm", 3, "xattn", "lm"),
        "encoder.2.mlp": ("encoder", 2, "mlp", "encoder"),  # an encoder-decoder's text encoder (Florence-2)
        "encoder.embed": ("encoder", None, "embed", "encoder"),
        "layer.0": ("layer", 0, "layer", "lm"),
        "rung7": ("rung7", None, "rung7", "lm"),
    }
    for name, want in cases.items():
        p = Point.parse(name)
        assert (p.side, p.layer, p.kind, p.sequence) == want, name
    assert Point.parse("lm.embed").depth == -1 and Point.parse("lm.5.attn").depth == 5
    assert math.isnan(Point.parse("vision.2.resid").depth) and math.isnan(Point.parse("logits").depth)
    assert [p for p in ("lm.embed", "lm.2.resid", "lm.2.attn", "vision.0.resid", "encoder.0.resid")
            if Point.parse(p).in_stream] == ["lm.embed", "lm.2.resid"]  # the lens reads the decoder's stream only
    assert math.isnan(Point.parse("encoder.1.resid").depth) and Point.parse("encoder.1.resid").numbered
    # the readout's helpers are the same parse
    assert parse_layer("lm.12.mlp") == 12 and math.isnan(parse_layer("logits")) and parse_layer("layer.3") == 3
    assert parse_kind("vision.4.resid") == "vision" and parse_kind("lm.2.resid@last") == "resid"


def _has_point_info(entry: dict, name: str) -> None:
    assert {"shape", "dtype", "positions", "side", "layer", "kind", "width", "module", "mode", "sequence"} <= set(entry)
    p = Point.parse(name)
    assert (entry["side"], entry["layer"], entry["kind"]) == (p.side, p.layer, p.kind)


def test_every_store_carries_point_info(tiny_model, tmp_path):
    model = tiny_model("llava")
    ims = probekit.tiny.fixture_images(4, 32)
    pts = ["vision.0.resid", "projector", "lm.embed", "lm.*.resid", "lm.0.mlp", "logits"]
    mem = probekit.collect(model, ims, "What?", points=pts, positions=("last", "image_mean"), progress=False)
    disk = probekit.collect(model, ims, "What?", points=pts, positions=("last", "image_mean"), progress=False,
                            store=tmp_path / "s", shard_size=2)
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    for p in mem.points:
        _has_point_info(index["points"][p], p)
        for store in (mem, disk, ActivationStore.open(tmp_path / "s")):
            assert store.point(p) == Point.of(model, p)
    saved = mem.save(tmp_path / "saved")
    assert all(saved.point(p) == Point.of(model, p) for p in mem.points)


def test_a_bare_in_memory_store_has_point_info_and_positions(tmp_path):
    bare = ActivationStore({"lm.0.resid": torch.zeros(3, 4), "lm.1.resid": torch.zeros(3, 2, 4), "a": torch.zeros(3, 5)},
                           meta={"positions": ["last", "image_mean"]})
    assert bare.positions("lm.1.resid") == ["last", "image_mean"]
    assert bare.positions("lm.0.resid") == []  # one 2-D slot, two names in meta: none fits
    assert ActivationStore({"x": torch.zeros(3, 4)}, meta={"positions": ["last"]}).positions("x") == ["last"]
    assert ActivationStore({"x": torch.zeros(3, 3, 4)}).positions("x") == ["0", "1", "2"]
    assert bare.point("lm.1.resid") == Point.parse("lm.1.resid")
    with pytest.raises(probekit.errors.UnknownPointError):
        bare.positions("lm.9.resid")
    back = bare.save(tmp_path / "b")
    assert back.positions("lm.1.resid") == ["last", "image_mean"] and back.point("a").kind == "a"


# ---------------------------------------------------------------- nothing else parses names

_SAMPLES = ("lm.3.resid", "vision.0.resid", "qformer.1.xattn", "lm.embed", "lm.2.resid@last")
_WORDS = re.compile(r"\blm\b|vision|qformer|resid|xattn|embed|projector|logits|\\\.\(\\d|\(\\d\+\)\\\.")
_RE_CALLS = {"compile", "match", "fullmatch", "search", "findall", "finditer", "split", "sub", "subn"}


def _point_regexes(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _RE_CALLS
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            pat = node.args[0].value
            if _WORDS.search(pat) or any(re.search(pat, s) for s in _SAMPLES):
                found.append(f"{path}:{node.lineno}: {pat!r}")
    return found


def test_no_module_but_hooks_points_has_a_regex_over_point_names():
    root = pathlib.Path(probekit.__file__).parent
    own = root / "hooks" / "points.py"
    assert _point_regexes(own), "the check finds the parser's own regex"
    hits = [h for f in sorted(root.rglob("*.py")) if f != own for h in _point_regexes(f)]
    assert not hits, "point names are parsed outside hooks/points.py (use Point.parse):\n" + "\n".join(hits)


@pytest.mark.parametrize("arch", sorted(coverage.covered()))
def test_point_widths_are_the_recorded_widths(arch):
    """Every width a family states without a forward pass is the width collect records."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = probekit.wrap(*zoo.build(arch))
    store = probekit.collect(model, probekit.tiny.fixture_images(2, 32), "What shape is it?", points="*",
                             positions="last", batch_size=2, progress=False)
    stated = {p: store.point(p).width for p in store.points}
    assert {p: w for p, w in stated.items() if w is not None and w != store[p].shape[-1]} == {}
    assert [p for p, w in stated.items() if w is None] == []
