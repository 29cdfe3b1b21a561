"""The demo: a tiny VLM that learned a yes/no task leaks what nobody asked it, and a control that cannot.

1. Build a tiny LLaVA offline and fine-tune it on CLEVR-like scenes to answer "Is the centre
   object red?" with ``Yes`` or ``No`` (the ladder organism, :mod:`probekit.studies.ladder.organism`;
   its held-out yes/no accuracy is printed).
2. On fresh scenes, :func:`probekit.scan` asks each layer (residual stream at the answer
   position), the tuned lens and the top-k output logits (the leakage ladder, k = 2 is the
   Yes/No pair alone) whether they know the target's **material** (rubber or metal: in the
   image, never asked).
3. The negative control: the same scan with a coin flip per image as the label (not in the
   image, so nothing can read it).
4. Writes ``report.html`` (material) and ``control.html`` (coin flip) and prints the two
   verdicts (family-wise corrected over every point tested), then the ladder's headline numbers.

Every number comes from this run (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DemoConfig", "run_demo", "write_reports", "print_summary"]

ATTRIBUTE, CONTROL = "target_material", "random"
PAGES = {
    "report": ("probekit demo: target material scan",
               "A tiny LLaVA fine-tuned to answer \"Is the centre object red?\" with Yes or No, scanned for the "
               "target object's material (rubber or metal): it is in the image but never asked. Each layer's "
               "residual stream, the tuned lens and the top-k output logits are probed for it."),
    "control": ("probekit demo: coin-flip negative control",
                "The negative control: the same model, scenes and scan as the target-material report, but the "
                "label is a coin flip per image. It is not in the image, so nothing can read it: every probe "
                "should stay at chance, and any leak reported here would be a false positive."),
}


@dataclass
class DemoConfig:
    out: str = "probekit-demo"
    seed: int = 0
    steps: int = 400
    n_train: int = 2000
    n_eval: int = 600
    num_layers: int = 4
    n_boot: int = 500
    ks: tuple = (2, 5, 10, None)
    progress: bool = True


def _scan(model: Any, ev: list, attr: str, cfg: DemoConfig) -> Any:
    from .scan import scan

    from .studies.ladder.organism import ANSWERS

    return scan(model, [s.image for s in ev], labels=[str(s.meta[attr]) for s in ev],
                         prompts=[s.question for s in ev], points="lm.*.resid", positions="last",
                         topk=None, ladder=cfg.ks, answer_tokens=ANSWERS, seed=cfg.seed, n_boot=cfg.n_boot,
                         progress=cfg.progress)


def _rung(ladder: Any, source: str, k: Any = None) -> dict:
    t = ladder[ladder.source == source]
    if source == "logits":
        t = t[t.k_label == str(k)]
    return t.loc[t.accuracy.idxmax()].to_dict()


def run_demo(cfg: DemoConfig | None = None) -> dict:
    """Run the demo end to end; returns the paths, verdicts and headline numbers."""
    import torch

    from ._progress import say
    from .studies.ladder.organism import LadderConfig, eval_scenes, train_organism
    from .readout.ladder import ladder_verdict
    from .report.verdicts import verdict

    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lcfg = LadderConfig(out=str(out), seed=cfg.seed, ask="red", num_layers=cfg.num_layers, n_train=cfg.n_train, steps=cfg.steps,
                        lr=3e-3, n_test=100, n_eval=cfg.n_eval, progress=cfg.progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast for a model this small, and the rest of the machine stays free
    try:
        model, acc, base_acc, _ = train_organism(lcfg, t0)  # says what it does, on the demo's clock
        ev = eval_scenes(lcfg)
        say(f"Scanning {len(ev)} fresh scenes for the material of the centre object (in the image, never asked): "
            "every layer, the tuned lens and the top-k output logits...", t0, cfg.progress)
        found = _scan(model, ev, ATTRIBUTE, cfg)
        say("Scanning the same scenes for a coin flip per image (the negative control: not in the image)...",
            t0, cfg.progress)
        control = _scan(model, ev, CONTROL, cfg)
    finally:
        torch.set_num_threads(threads)
    say(f"Writing the two HTML reports to {out.resolve()}...", t0, cfg.progress)
    report, control_path = write_reports(found, control, out)
    return {
        "report": str(report), "control_report": str(control_path), "seconds": time.perf_counter() - t0,
        "task_accuracy": acc, "untrained_accuracy": base_acc,
        "verdicts": [verdict(found.table), verdict(control.table)],
        "detected": bool(found.table.leaks.any()), "control_detected": bool(control.table.leaks.any()),
        "best": _rung(found.ladder, "residual"), "yes_no": _rung(found.ladder, "logits", 2),
        "full": _rung(found.ladder, "logits", "full"), "control_best": _rung(control.ladder, "residual"),
        "ladder_verdicts": [ladder_verdict(r.ladder)[1] for r in (found, control)],
        "found": found, "control": control,
    }


def write_reports(found: Any, control: Any, out: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (the target-material scan) and ``control.html`` (the coin-flip
    control), each titled and introduced as what it is; returns their paths."""
    out = Path(out)
    found_path = found.save(out / "report.html", title=PAGES["report"][0], intro=PAGES["report"][1])
    control_path = control.save(out / "control.html", title=PAGES["control"][0], intro=PAGES["control"][1])
    return found_path, control_path


def print_summary(res: dict) -> None:
    """Seven lines: the two verdicts, the ladder's numbers, the control's, the task and the files."""
    from .report.text import ci_text

    b, yn, full, c = res["best"], res["yes_no"], res["full"], res["control_best"]
    acc = res["task_accuracy"]
    print(f"Material (in the image, never asked): {res['verdicts'][0]}")
    print(f"Coin flip per image (negative control, not in the image): {res['verdicts'][1]}")
    print(f"Material from the residual stream: {ci_text(b, 'accuracy')} at {b['point']} (chance {b['chance']:.2f}); "
          f"from the Yes/No logits alone: {ci_text(yn, 'accuracy')}; from the full output distribution: {ci_text(full, 'accuracy')}.")
    tested = "detected" if res["control_detected"] else "nothing detected"  # the best of many rows is not a finding
    print(f"Coin flip from the residual stream: best {ci_text(c, 'accuracy')} at {c['point']} (chance {c['chance']:.2f}; "
          f"uncorrected, the best of every layer: {tested} after the family-wise correction).")
    print(f"Ladder (residual, tuned lens, top-k logits) — material: {res['ladder_verdicts'][0]}; "
          f"coin flip: {res['ladder_verdicts'][1]}.")
    print(f"The model answers its yes/no question with accuracy {ci_text(acc, 'accuracy')} on "
          f"{acc.get('n', '?')} held-out scenes (untrained: {res['untrained_accuracy']['accuracy']:.2f}, its top token is neither word).")
    print(f"Report: {res['report']} (control: {res['control_report']}; {res['seconds']:.0f} s)")
