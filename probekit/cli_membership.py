"""``probekit membership``: per-layer membership readouts of a model on two folders of images.

``probekit membership --model PATH --members DIR --nonmembers DIR (--answers CSV | --answer TEXT)
[--prompts TEXT] [--base PATH] --out report.html``: every input is checked (folders, the answers CSV,
every image file) before a model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction, model_help: str) -> None:
    m = sub.add_parser("membership", help="which training samples a model holds, layer by layer (members vs "
                                          "non-members), with the distribution-shift guard; writes an HTML report")
    m.add_argument("--model", required=True, help=model_help)
    m.add_argument("--members", required=True, help="folder of images the model was trained on")
    m.add_argument("--nonmembers", required=True, help="folder of images it never saw, drawn like the members")
    ans = m.add_mutually_exclusive_group(required=True)
    ans.add_argument("--answers", default=None,
                     help="CSV with 'image' (file name in either folder) and 'answer' columns, optionally 'group' "
                          "(samples of one source, e.g. one name)")
    ans.add_argument("--answer", default=None, help="the same teacher-forced answer for every image")
    m.add_argument("--prompts", "--prompt", dest="prompts", default="Describe the image.",
                   help='the question the answers reply to (default "Describe the image.")')
    m.add_argument("--base", default=None, help="the model before fine-tuning: reference-calibrated rows, its scores "
                                                "in the blind baseline, and the causal attribution")
    m.add_argument("--out", default="membership.html", help="HTML report to write (default membership.html)")
    m.add_argument("--cv", type=int, default=5, help="cross-validation folds of the probes (default: 5)")
    m.add_argument("--seed", type=int, default=0, help="seed of folds, permutations and bootstrap (default: 0)")
    m.add_argument("--batch-size", type=int, default=16, help="samples per forward pass (default: 16)")
    m.add_argument("--device", default="cpu", help="torch device of the models (default: cpu)")


def _rows(folder: str, answers: dict | None, answer: str | None, prompt: str, what: str) -> list[dict]:
    from probekit.data.images import check_images
    from probekit.data.sources import _folder
    from probekit.errors import InputError

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"--{what} {folder} is not a folder", fix="pass a folder of image files")
    src = _folder(path)
    check_images(src.images)  # every file's structure, before any model loads
    rows = []
    for f, name in zip(src.images, src.names):
        if answers is not None and name not in answers and Path(name).name not in answers:
            raise InputError(f"the answers CSV has no row for {what} image {name!r}",
                             fix="add a row (image,answer) for every image of both folders")
        rec = answers.get(name) or answers.get(Path(name).name) if answers is not None else {"answer": answer}
        rows.append({"image": f, "prompt": prompt, "answer": rec["answer"],
                     **({"group": rec["group"]} if rec.get("group") else {})})
    return rows


def run(args: argparse.Namespace) -> int:
    import csv

    from .models.loading import load
    from .membership import membership
    from probekit.errors import InputError

    answers = None
    if args.answers is not None:
        p = Path(args.answers)
        if not p.is_file():
            raise InputError(f"--answers {args.answers} does not exist", fix="pass a CSV with image and answer columns")
        with open(p, newline="") as f:
            table = list(csv.DictReader(f))
        if not table or not {"image", "answer"} <= set(table[0]):
            raise InputError(f"--answers {p} needs 'image' and 'answer' columns", fix="write a header image,answer[,group]")
        answers = {r["image"]: r for r in table}
    members = _rows(args.members, answers, args.answer, args.prompts, "members")
    nonmembers = _rows(args.nonmembers, answers, args.answer, args.prompts, "nonmembers")
    model = load(args.model, device=args.device)
    base = load(args.base, device=args.device) if args.base else None
    rep = membership(model, members, nonmembers, base=base, cv=args.cv, seed=args.seed,
                              batch_size=args.batch_size)
    rep.save(args.out)
    print(rep.summary())
    print(f"report: {args.out}")
    return 0
