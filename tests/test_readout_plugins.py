"""Issue 26: scan's readouts are plug-ins (``scan(..., readouts=[...])``, ``probekit scan --readouts``) and
lenses share one ``Lens`` base. The built-in readouts give the default scan's tables value for value; a
registered readout's table comes back in ``ScanReport.extra``; a custom ``Lens`` gives the lens tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import probekit
from probekit.cli import main
from probekit.errors import InputError
from probekit.readout import Readout, plugins, register_readout
from probekit.readout.lens import Lens, LogitLens

pytestmark = pytest.mark.usefixtures("one_thread")

N = 24
LABELS = [i % 2 for i in range(N)]
KW = dict(cv=2, n_boot=20, n_perm=19, progress=False)


@pytest.fixture(scope="module")
def images():
    return probekit.tiny.fixture_images(N, 32)


@pytest.fixture(scope="module")
def default(llava, images):
    """Today's scan: labels and targets give the lens, targets and probes tables."""
    return probekit.scan(llava, images, labels=LABELS, targets=["cat"], **KW)


def _same(a: pd.DataFrame | None, b: pd.DataFrame | None) -> None:
    assert a is not None and b is not None and len(a) > 0
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_named_readouts_give_the_default_tables_value_for_value(llava, images, default):
    named = probekit.scan(llava, images, labels=LABELS, targets=["cat"], readouts=["probes", "lens", "targets"], **KW)
    for slot in ("table", "lens", "targets"):
        _same(getattr(default, slot), getattr(named, slot))
    assert named.settings["points"] == default.settings["points"] and named.settings["readouts"] == \
        ["probes", "lens", "targets"]
    assert "readouts" not in default.settings  # the default report is what it was
    # the probes' target columns are joined although "targets" is listed after them
    assert default.table.target_prob.notna().any()
    # a readout's figure is the report's own figure of its table
    for r, kind in ((plugins.ProbesReadout(), "leakage"), (plugins.LensReadout(), "lens"),
                    (plugins.TargetsReadout(), "targets")):
        assert r.figure(named).to_json() == named.figure(kind).to_json()
    assert plugins.LadderReadout().figure(named) is None and MeanNorm().figure(named) is None


def test_probes_alone_and_lens_alone_are_the_default_scans_parts(llava, images):
    probes = probekit.scan(llava, images, labels=LABELS, **KW)  # default with labels: the probes only
    assert probes.lens is None and set(probes.table.source) == {"residual", "logits-topk"}
    both = probekit.scan(llava, images, labels=LABELS, readouts="probes,lens", **KW)
    _same(probes.table, both.table)
    unlabelled = probekit.scan(llava, images, **KW)  # default without labels: the lens only
    _same(unlabelled.lens, both.lens)
    assert both.notes == [] and unlabelled.notes  # labels were given, so no "no labels" note
    lens_only = probekit.scan(llava, images, labels=LABELS, readouts=["lens"], **KW)
    _same(unlabelled.lens, lens_only.lens)
    assert lens_only.table.empty and "left out the probes" in lens_only.notes[0]


def test_the_ladder_readout_equals_ladder_equals(llava, images):
    kw = dict(labels=LABELS, points=["lm.1.resid"], tuned_lens=False, **KW)
    by_arg = probekit.scan(llava, images, ladder=(2, 5), **kw)
    by_name = probekit.scan(llava, images, ladder=(2, 5), readouts=["probes", "ladder"], **kw)
    _same(by_arg.ladder, by_name.ladder)
    _same(by_arg.table, by_name.table)
    assert by_arg.settings["points"] == ["lm.0.resid", "lm.1.resid"]  # the ladder widens the points, as before
    assert list(by_name.ladder.k_label.unique()[1:]) == ["2", "5"]


class _OneTokenWords:
    """A model whose tokenizer makes every word one token (what the ladder's answer words must be)."""

    def __init__(self):
        self.processor = lambda text, add_special_tokens=False: {"input_ids": [len(text)]}


def test_needs_decide_what_collect_keeps_of_the_output():
    m = _OneTokenWords()
    ctx = plugins.Context(m, LABELS, topk=10, ladder=(2, 5, 50), answer_tokens=("a", "bb", "ccc"), positions=("last",))
    probes, ladder = plugins.ProbesReadout(), plugins.LadderReadout()
    assert plugins.output_topk([probes.needs(ctx), ladder.needs(ctx)]) == 50
    assert plugins.output_topk([probes.needs(ctx)]) == 10
    two = plugins.Context(m, LABELS, ladder=(2, 5), answer_tokens=("a", "bb"), positions=("last",))
    assert plugins.output_topk([ladder.needs(two)]) is None  # the answer-word rung reads every token's log-prob
    assert plugins.output_topk([plugins.LensReadout().needs(ctx)]) is None  # no output read: nothing to cut
    with pytest.raises(InputError, match="reads the next-token output at 'last'"):  # checked before any forward
        ladder.needs(plugins.Context(m, LABELS, ladder=(2,), positions=("image_mean",)))
    with pytest.raises(InputError, match="tuned_lens must be True, False or a TunedLens"):
        ladder.needs(plugins.Context(m, LABELS, ladder=(2,), positions=("last",), tuned_lens="yes"))


class MeanNorm(Readout):
    """Mean L2 norm per probed point and position."""

    def run(self, acts, ctx, tables):
        rows = [{"point": p, "position": pos, "norm": float(acts.read(p, j).float().norm(dim=-1).mean())}
                for p in ctx.points for j, pos in enumerate(acts.positions(p))]
        return {"norms": pd.DataFrame(rows)}


@pytest.fixture
def registered():
    register_readout("mean-norm", MeanNorm)
    yield
    plugins.READOUTS.pop("mean-norm")


def test_a_registered_readout_runs_through_scan(llava, images, default, registered):
    r = probekit.scan(llava, images, labels=LABELS, targets=["cat"], readouts=["probes", "lens", "targets", "mean-norm"],
                      **KW)
    _same(default.table, r.table)
    norms = r.extra["norms"]
    store = probekit.collect(llava, images, "Describe the image.", points="lm.*.resid", positions=("last", "image_mean"),
                             progress=False)
    want = store["lm.1.resid"][:, 0].float().norm(dim=-1).mean().item()
    got = norms[(norms.point == "lm.1.resid") & (norms.position == "last")].norm.item()
    assert math.isclose(got, want, rel_tol=1e-5)
    assert set(norms.point) == set(r.settings["points"]) and len(norms) == 2 * len(r.settings["points"])
    back = probekit.ScanReport.from_json(r.to_json())
    _same(back.extra["norms"], norms)
    assert back == r


def test_an_instance_works_and_a_slot_filled_twice_is_refused(llava, images):
    class Twice(Readout):
        name = "twice"

        def run(self, acts, ctx, tables):
            return {"lens": pd.DataFrame({"x": [1]})}

    with pytest.raises(InputError, match="both fill the report's 'lens' table"):
        probekit.scan(llava, images[:4], readouts=["lens", Twice()], progress=False)


def test_unknown_names_are_refused_before_any_forward_pass(no_forward, images):
    with pytest.raises(InputError) as info:
        probekit.scan(no_forward, images, labels=LABELS, readouts=["probes", "leakage"], **KW)
    assert "'leakage'" in str(info.value) and "'probes'" in info.value.fix and "'ladder'" in info.value.fix
    bad = [(dict(readouts=[]), "non-empty"), (dict(readouts=["lens", "lens"]), "twice"),
           (dict(readouts=["lens"], targets=["cat"]), "leaves out 'targets'"),
           (dict(readouts=["lens"], ladder=True), "leaves out 'ladder'"),
           (dict(readouts=["targets"]), "no targets were given"), (dict(readouts=["ladder"], ladder=False), "ladder=False")]
    for kw, words in bad:
        with pytest.raises(InputError, match=words):
            probekit.scan(no_forward, images, labels=LABELS, **{**KW, **kw})
    with pytest.raises(InputError, match="no labels were given"):
        probekit.scan(no_forward, images, readouts=["probes"], progress=False)
    with pytest.raises(InputError, match="not a Readout subclass"):
        register_readout("x", int)
    with pytest.raises(InputError, match="already registered"):
        register_readout("probes", MeanNorm)


def test_the_cli_refuses_an_unknown_readout_before_loading(tmp_path, monkeypatch, capsys, images):
    monkeypatch.setattr(probekit, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    for i, im in enumerate(images[:6]):
        im.save(tmp_path / f"{i}.png")
    argv = ["scan", "--model", "nowhere", "--images", str(tmp_path), "--readouts", "probes,nope"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown readout 'nope'" in err and "'lens'" in err


def test_the_cli_passes_readouts_to_scan(tiny_dir, tmp_path, capsys, images):
    for i, im in enumerate(images[:6]):
        im.save(tmp_path / f"{i}.png")
    out = tmp_path / "r.json"
    assert main(["scan", "--model", tiny_dir("llava"), "--images", str(tmp_path), "--readouts", "lens",
                 "--out", str(tmp_path / "r.html"), "--json", str(out)]) == 0
    r = probekit.ScanReport.from_json(out.read_text())
    assert r.settings["readouts"] == ["lens"] and len(r.lens) and r.table.empty


class RandomLens(Lens):
    """Decodes every point through one fixed random matrix."""

    def __init__(self, model):
        super().__init__(model)
        self.w = torch.randn(model.d_model, model.unembed.weight.shape[0], generator=torch.Generator().manual_seed(0))

    def decode(self, h, point=None):
        return h.float().cpu() @ self.w


def test_a_custom_lens_gives_top_k_and_target_ranks(llava, images):
    store = probekit.collect(llava, images[:6], "Describe the image.", points="lm.*.resid", positions="last",
                             progress=False)
    lens = RandomLens(llava)
    top = lens.top_k(store, k=3)
    probs = torch.softmax(store["lm.0.resid"].float() @ lens.w, -1).mean(0)
    val, idx = probs.topk(3)
    first = top[top.point == "lm.0.resid"]
    assert first.token_id.tolist() == idx.tolist()
    assert torch.allclose(torch.tensor(first.prob.tolist()), val.double().float(), rtol=1e-5)
    ranks = lens.target_ranks(store, ["cat"], points=["lm.0.resid"])
    assert (ranks.rank_median >= 1).all() and len(ranks) == len(llava.processor.tokenizer("cat", add_special_tokens=False)
                                                                     ["input_ids"])
    torch.testing.assert_close(lens.log_probs(store["lm.0.resid"][:2]), torch.log_softmax(store["lm.0.resid"][:2].float()
                                                                                            @ lens.w, -1))
    assert isinstance(LogitLens(llava), Lens) and probekit.Lens is Lens
    with pytest.raises(TypeError):
        Lens(llava)  # decode is abstract
