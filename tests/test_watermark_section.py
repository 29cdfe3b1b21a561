"""The watermark study's write-up: each regime's verdict sentence follows its runs and its controls."""

from pathlib import Path

import pandas as pd

from probekit.experiments.watermark_study import section


def _row(condition, kind, seed, detected, control=False, lora=False, mia=0.5, seen=0.6, unseen=0.6):
    return {"condition": condition, "kind": kind, "seed": seed, "detected": detected, "control": control,
            "lora": lora, "n_users": 12, "n_detected": int(detected), "m": 14,
            "hits": "mia.loss@answer" if detected else "", "residual_detected": False,
            "residual_best": "lm.1.resid@answer_mean", "residual_acc": 0.55, "residual_lo": 0.4, "residual_hi": 0.7,
            "mia_auc": mia, "mia_lo": mia - 0.1, "mia_hi": mia + 0.1, "task_acc": float("nan") if kind == "base" else 0.5,
            "direct_seen": seen, "direct_seen_lo": seen - 0.05, "direct_seen_hi": seen + 0.05,
            "direct_unseen": unseen, "direct_unseen_lo": unseen - 0.05, "direct_unseen_hi": unseen + 0.05}


def _text(rows):
    res = {"table": pd.DataFrame(rows), "seconds": 60.0,
           "ocr": {"n": 200, "char_accuracy": 0.94, "char_accuracy_lo": 0.93, "char_accuracy_hi": 0.95,
                   "exact_match": 0.72}}
    return section(res, {}, Path("docs"), "probekit study watermark --full")


def test_lora_and_full_leaks_get_their_own_verdicts():
    rows = [_row("base reader (not fine-tuned)", "base", s, False, control=True) for s in range(3)]
    rows += [_row("p=1, p0", "task-irrelevant", s, False) for s in range(3)]
    rows += [_row("p=0, p0", "task-irrelevant", s, False, control=True) for s in range(3)]
    rows += [_row("leak", "leak", s, True, mia=0.9, seen=0.95, unseen=0.55) for s in range(3)]
    rows += [_row("leak (U3)", "leak", s, False, control=True, mia=0.45) for s in range(3)]
    rows += [_row("leak LoRA", "leak", s, s == 0, lora=True, mia=0.7, seen=0.9) for s in range(3)]
    rows += [_row("leak LoRA (U3)", "leak", s, False, control=True, lora=True) for s in range(3)]
    text = _text(rows)
    assert "**Task-irrelevant: nothing detected**: 0 of 3 watermarked fine-tunes" in text
    assert "**Leak (full fine-tune): detected** in 3 of 3 leak fine-tunes" in text
    assert "AUC, mean over runs: 0.90 with U1 read in training, 0.45 in the controls" in text
    assert "**Leak (LoRA): nothing detected**: 1 of 3 leak fine-tunes" in text
    assert "the detections do not replicate across seeds" in text


def test_one_kind_of_fine_tune_is_not_labelled_full_or_lora():
    rows = [_row("base reader (not fine-tuned)", "base", 0, False, control=True),
            _row("leak", "leak", 0, True, mia=0.9), _row("leak (U3)", "leak", 0, True, control=True)]
    text = _text(rows)
    assert "**Leak: nothing detected**: 1 of 1 leak fine-tunes (half the watermarked images ask for their U1 name) " \
           "and 1 of 1 matched U3 controls" in text
    assert "a detection is no more frequent than in the controls" in text
