"""Every remover of the facts study on one held-out table, its Pareto figure, and the SAE removers' record.

- :func:`comparison`: per split and method, what the answer lost (forget multiple choice before -> after,
  the drop), what it cost (retain and test-portrait accuracy, ``utility_destroyed``, KL of the next token
  on never-seen profiles' questions), and whether the fact is gone from the residual stream or only from
  the answer (the job read per layer by probes fitted on retain and on forget profiles, layer-wise
  membership, the loss-attack AUC), with the distance from the retrained reference.
- :func:`pareto` (matplotlib): forget drop against retain accuracy and against KL on clean inputs, one
  marker per method, for one split.
- :func:`sae_lines` / :func:`sweep_table`: the SAE's quality and training time, the latents each SAE
  remover chose and the setting it chose on held-out views.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ...report.text import ci_text, fmt

__all__ = ["FAMILIES", "comparison", "comparison_md", "pareto", "sae_lines", "sweep_table"]

FAMILIES = {"retrain": "reference", "ga": "fine-tuning", "gd": "fine-tuning", "kl": "fine-tuning", "npo": "fine-tuning",
            "gd_mllmu": "fine-tuning", "kl_mllmu": "fine-tuning", "ablate": "direction", "leace": "direction",
            "orthogonalize": "direction", "sae_steer": "SAE", "sae_clamp": "SAE"}
_COLOURS = {"reference": "k", "fine-tuning": "tab:blue", "direction": "tab:orange", "SAE": "tab:green"}


def _ci(r: dict, key: str) -> str:
    return ci_text(r, key) if key in r and not pd.isna(r[key]) else "–"


def comparison(res: dict) -> pd.DataFrame:
    """One row per split and method (``none`` first): the numbers of the comparison (module docstring)."""
    u, up, ml = res["unlearning"], res["unlearning_probes"], res["membership_layers"]
    rows = []
    for r in u.to_dict("records"):
        base = u[(u.split == r["split"]) & (u.method == "none")].iloc[0]
        pp = up[(up.split == r["split"]) & (up.method == r["method"])]
        lm = ml[(ml.split == r["split"]) & (ml.method == r["method"]) & (ml.stage == "after removal")]
        fit = {f: g for f, g in pp.groupby("fit", sort=False)}
        ret = next((g for f, g in fit.items() if f.startswith("retain")), pp.iloc[:0])
        own = next((g for f, g in fit.items() if f.startswith("forget")), pp.iloc[:0])
        rows.append({
            "split": r["split"], "method": r["method"], "family": FAMILIES.get(r["method"], "none"),
            "forget_image": r["forget_image"], "forget_image_lo": r["forget_image_lo"],
            "forget_image_hi": r["forget_image_hi"], "forget_text": r["forget_text"],
            "forget_drop_image": base["forget_image"] - r["forget_image"],
            "forget_drop_text": base["forget_text"] - r["forget_text"],
            "retain_image": r["retain_image"], "retain_image_lo": r["retain_image_lo"],
            "retain_image_hi": r["retain_image_hi"], "retain_text": r["retain_text"],
            "retain_test_image": r.get("retain_test_image", math.nan),
            "utility_destroyed": bool(r.get("utility_destroyed")),
            "kl_clean": r.get("kl_clean", math.nan), "kl_clean_lo": r.get("kl_clean_lo", math.nan),
            "kl_clean_hi": r.get("kl_clean_hi", math.nan),
            "d_forget_image": r.get("d_forget_image", math.nan),
            "probe_retain_fit_detected": int(ret.detected.sum()), "probe_retain_fit_rows": len(ret),
            "probe_retain_fit_best": float(ret.accuracy.max()) if len(ret) else math.nan,
            "probe_forget_fit_detected": int(own.detected.sum()), "probe_forget_fit_rows": len(own),
            "member_detected": int(lm.detected.sum()), "member_rows": len(lm),
            "member_best": float(lm.accuracy.max()) if len(lm) else math.nan,
            "mia_auc": r.get("mia_auc", math.nan), "relearn_recovered_image": r.get("relearn_recovered_image", math.nan),
            "steer_kl": r.get("steer_kl", math.nan),
            "sae_setting": r["sae_setting"] if isinstance(r.get("sae_setting"), str) else "",
        })
    return pd.DataFrame(rows)


def comparison_md(c: pd.DataFrame) -> pd.DataFrame:
    """The comparison as the cells of the results page."""
    out = []
    for r in c.to_dict("records"):
        out.append({
            "split": r["split"], "method": r["method"] + (f" {json.loads(r['sae_setting'])}" if r["sae_setting"] else ""),
            "forget MC portrait (drop)": f"{_ci(r, 'forget_image')} ({r['forget_drop_image']:+.2f})",
            "forget MC name (drop)": f"{fmt(r['forget_text'])} ({r['forget_drop_text']:+.2f})",
            "Δ forget vs retrain": "–" if pd.isna(r["d_forget_image"]) else f"{r['d_forget_image']:+.2f}",
            "retain MC portrait / name": f"{_ci(r, 'retain_image')} / {fmt(r['retain_text'])}",
            "retain test portraits": fmt(r["retain_test_image"]),
            "utility": "**destroyed**" if r["utility_destroyed"] else "kept",
            "KL on clean inputs (nats)": _ci(r, "kl_clean"),
            "job probe rows detected, retain-fit / forget-fit": (f"{r['probe_retain_fit_detected']}/{r['probe_retain_fit_rows']}"
                                                                 f" / {r['probe_forget_fit_detected']}/{r['probe_forget_fit_rows']}"),
            "layer membership detected (best acc)": f"{r['member_detected']}/{r['member_rows']} ({fmt(r['member_best'])})",
            "MIA AUC": fmt(r["mia_auc"]),
        })
    return pd.DataFrame(out)


def pareto(plt, c: pd.DataFrame, split: int):
    """Forget drop (portrait) against retain accuracy and against KL on clean inputs, one marker per method."""
    d = c[(c.split == split) & (c.method != "none")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, (key, label) in zip(axes, (("retain_image", "retain multiple choice, portrait (95% CI)"),
                                       ("kl_clean", "KL on clean inputs, nats (95% CI, log scale)"))):
        for r in d.to_dict("records"):
            col = _COLOURS.get(r["family"], "grey")
            y, lo, hi = r[key], r[f"{key}_lo"], r[f"{key}_hi"]
            if key == "kl_clean":
                y, lo, hi = (max(v, 1e-4) for v in (y, lo, hi))
            ax.errorbar([r["forget_drop_image"]], [y], yerr=[[y - lo], [hi - y]], fmt="o" if not r["utility_destroyed"]
                        else "x", color=col, ms=6, capsize=2)
            ax.annotate(r["method"], (r["forget_drop_image"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("forget drop: multiple choice with the portrait, before − after")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    base = c[(c.split == split) & (c.method == "none")]
    if len(base):
        axes[0].axhline(float(base.retain_image.iloc[0]), ls="--", c="grey", lw=1)
    axes[0].axhline(0.25, ls=":", c="k", lw=1)
    handles = [plt.Line2D([], [], marker="o", ls="", color=v, label=k) for k, v in _COLOURS.items()]
    axes[0].legend(handles=handles, fontsize=7, loc="lower left")
    fig.suptitle(f"Every remover at the {split}% split (held-out): what the answer lost against what it cost "
                 "(x: utility destroyed)", fontsize=10)
    return fig


def sae_lines(res: dict) -> list[str]:
    """Lines on the study's SAE: where, how trained, its held-out quality."""
    s = res.get("sae")
    if not s:
        return []
    return [f"SAE: {s['architecture']} (k = {s['k']}), {s['d_sae']} latents on `{s['point']}` (width {s['d_in']}), "
            f"trained with `probekit.sae.train_sae` on {s['train_rows']} rows (every image token and the last three "
            f"text tokens of the model's own training questions), {s['train_steps']} steps, "
            f"{fmt(s['train_seconds'], 1)} s on one thread{' (loaded from its cache in sae-lens format)' if s['cached'] else ''}. "
            f"Held out (test portraits, last token, {s['held_out_rows']} rows): FVU {s['heldout_fvu']:.3f}, L0 "
            f"{s['heldout_l0']:.1f}, dead latents {s['heldout_dead']} ({s['heldout_dead_fraction']:.0%}), cosine "
            f"{s['heldout_cosine']:.3f}; spliced in at every position: next-token KL {fmt(s['kl_sae'], 3)} nats "
            f"[{fmt(s['kl_sae_lo'], 3)}, {fmt(s['kl_sae_hi'], 3)}] (zero ablation {fmt(s['kl_zero'])}), answer loss "
            f"{fmt(s['loss_clean'], 3)} → {fmt(s['loss_sae'], 3)} (zero ablation {fmt(s['loss_zero'])}): loss recovered "
            f"{fmt(s.get('loss_recovered'), 3)}."]


def sweep_table(res: dict) -> pd.DataFrame:
    """The SAE removers' settings on the held-out fitting views (the chosen one marked)."""
    sw, u = res.get("sae_sweep"), res["unlearning"]
    if sw is None or not len(sw):
        return pd.DataFrame()
    rows = []
    for r in sw.to_dict("records"):
        key = "beta" if r["method"] == "sae_steer" else "clamp"
        chosen = u[(u.split == r["split"]) & (u.method == r["method"])]
        pick = json.loads(chosen.sae_setting.iloc[0]) if len(chosen) and isinstance(chosen.sae_setting.iloc[0], str) else {}
        val = r[key]
        rows.append({"split": r["split"], "method": r["method"],
                     "setting": f"beta = {val:g}" if key == "beta" else f"clamp to -{val:g} alpha",
                     "forget MC (fit views)": f"{r['forget_fit_before']:.2f} → {r['forget_fit']:.2f}",
                     "retain MC (fit views)": f"{r['retain_fit_before']:.2f} → {r['retain_fit']:.2f}",
                     "forget drop − retain drop": f"{r['gain']:+.3f}",
                     "chosen": "**yes**" if np.isclose(pick.get(key, np.nan), val) else ""})
    return pd.DataFrame(rows)
