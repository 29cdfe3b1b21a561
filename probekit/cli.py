"""The ``probekit`` command line.

``probekit demo``: a tiny LLaVA that learned a yes/no task leaks an unasked attribute; a coin-flip control does not.
``probekit scan --model PATH --images DIR [--labels CSV] [--answers CSV] [--targets ...] [--readouts probes,lens]
--out report.html``.
``probekit points --model PATH``: list a model's hook points.
``probekit collect --model PATH --images DIR --out STORE``: record points to a disk store.
``probekit membership --model PATH --members DIR --nonmembers DIR --answers CSV [--base PATH]``: membership per layer.
``probekit study NAME [--small] [--full] [--sae] [--out DIR] [--docs DIR]``: a packaged study (ladder, watermark,
unlearning, memorization, calibration: :mod:`probekit.studies`, listed in docs/studies.md); a full run rewrites
its section of docs/results.md.

Bad arguments exit with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

_MODEL_HELP = "checkpoint directory or hub id (required)"


class _ModelMissing(Exception):
    """argparse found --model missing: main() says so in probekit's own words (and what to pass)."""

    def __init__(self, command: str, others: list[str]):
        super().__init__(command)
        self.command, self.others = command, others


class _Parser(argparse.ArgumentParser):
    """``--model`` is declared required (so ``--help`` shows it so); its absence gets probekit's message."""

    def error(self, message: str):  # type: ignore[override]
        head = "the following arguments are required:"
        if message.startswith(head):
            missing = [m.strip() for m in message[len(head):].split(",")]
            if "--model" in missing:
                raise _ModelMissing(self.prog.split()[-1], [m for m in missing if m != "--model"])
        super().error(message)


def _model_missing(command: str, others: Sequence[str] = ()) -> Exception:
    from probekit.errors import InputError

    also = f" (also missing: {', '.join(others)})" if others else ""
    return InputError(f"--model is missing: {command} needs a model{also}",
                      fix="pass --model DIR (a checkpoint directory, e.g. one written by probekit.tiny.build"
                          "('llava', DIR)) or --model HUB_ID (a hub id, e.g. llava-hf/llava-1.5-7b-hf)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="probekit", description="Find what a vision-language model silently knows, and remove it.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="a tiny VLM trained on yes/no questions: scan it for an unasked attribute and a coin-flip control")
    d.add_argument("--out", default="probekit-demo", help="folder for the demo's files (default: probekit-demo)")
    d.add_argument("--seed", type=int, default=0, help="seed of the data, training and probes (default: 0)")
    d.add_argument("--steps", type=int, default=400, help="fine-tuning steps (default: 400)")

    s = sub.add_parser("scan", help="probe every layer for what it reveals about the images; write an HTML report")
    s.add_argument("--model", required=True, help=_MODEL_HELP)
    s.add_argument("--images", required=True, help="folder of images; <folder>/<label>/<image> gives labels")
    s.add_argument("--labels", default=None,
                   help="CSV with a label column and an image column naming each file in the folder (without an "
                        "image column the rows are taken in the order of the sorted file names)")
    s.add_argument("--label-column", default=None, help="column of --labels holding the labels (default: label)")
    s.add_argument("--image-column", default=None,
                   help="column of --labels and --answers naming each image file, relative to --images or by file "
                        "name (default: image; else file, filename or path if present)")
    s.add_argument("--allow-missing-images", action="store_true",
                   help="CSV rows naming images that are not in --images are skipped with a warning "
                        "(default: an error)")
    s.add_argument("--targets", nargs="*", default=None,
                   help="strings whose logit-lens rank is reported per layer (default: none)")
    s.add_argument("--readouts", default=None,
                   help='comma-separated readouts to run: probes, lens, targets, ladder or a registered plug-in, e.g. '
                        '"probes,lens" (default: probes with labels, the logit lens without, targets with --targets)')
    s.add_argument("--prompts", "--prompt", dest="prompts", default=None,
                   help='prompt used with every image (--prompt is the older spelling; default "Describe the image.")')
    ans = s.add_mutually_exclusive_group()
    ans.add_argument("--answer", default=None,
                     help="reply teacher-forced after the prompt on every image (read it with --positions answer_mean)")
    ans.add_argument("--answers", default=None,
                     help="CSV with an 'answer' column (and 'image' matching file names): one forced reply per image")
    s.add_argument("--points", default="lm.*.resid", help='comma-separated globs (default "lm.*.resid")')
    s.add_argument("--positions", default="last,image_mean",
                   help='comma-separated positions (default "last,image_mean"; with answers also answer_mean, prompt_last)')
    s.add_argument("--out", default="report.html", help="HTML report to write (default report.html)")
    s.add_argument("--json", default=None, help="also write the report as JSON here")
    s.add_argument("--store", default=None,
                   help="stream activations to this directory (resumable; needed under torchrun, where the ranks split the images)")
    s.add_argument("--cv", type=int, default=5,
                   help="cross-validation folds of the probes; each class needs at least this many images (default: 5)")
    s.add_argument("--seed", type=int, default=0, help="seed of the folds and permutations (default: 0)")
    s.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    s.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda or cuda:1 (default: cpu)")
    s.add_argument("--dtype", default=None,
                   help="float32, bfloat16, float16 or auto (the checkpoint's own dtype; default: float32)")

    pts = sub.add_parser("points", help="list the hook points of a model")
    pts.add_argument("--model", required=True, help=_MODEL_HELP)
    pts.add_argument("--pattern", default=None, help='glob, e.g. "lm.*.resid" (default: every point)')

    c = sub.add_parser("collect", help="record hook points for a folder of images into a disk store")
    c.add_argument("--model", required=True, help=_MODEL_HELP)
    c.add_argument("--images", required=True, help="folder of image files (searched recursively)")
    c.add_argument("--out", required=True, help="store directory (resumed if it exists)")
    c.add_argument("--prompts", "--prompt", dest="prompts", default=None,
                   help='prompt used with every image (--prompt is the older spelling; default "Describe the image.")')
    c.add_argument("--points", default="lm.*.resid", help='comma-separated globs (default "lm.*.resid")')
    c.add_argument("--positions", default="last", help='comma-separated positions (default "last")')
    c.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    c.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda or cuda:1 (default: cpu)")
    c.add_argument("--dtype", default=None,
                   help="float32, bfloat16, float16 or auto (the checkpoint's own dtype; default: float32)")

    from probekit.cli_membership import add_parser as _membership_parser

    _membership_parser(sub, _MODEL_HELP)

    from probekit.studies import names

    st = sub.add_parser("study", help="run a packaged study (`probekit study NAME --help`; the list: docs/studies.md)")
    st.add_argument("name", choices=names(), help="which study: " + ", ".join(names()))
    st.add_argument("--small", action="store_true", help="the quick CI version; prints, writes no docs")
    st.add_argument("--full", action="store_true", help="memorization / watermark: the full grid; writes docs/results.md and docs/img/")
    st.add_argument("--out", default=None, help="folder for checkpoints and tables (default: the study's, printed first)")
    st.add_argument("--docs", default="docs", help="where a full run writes results.md and img/ (default docs)")
    st.add_argument("--sae", action="store_true",
                    help="ladder: SAEs on the organism; watermark: with --full every remover (GA, GD, KL, NPO, "
                         "directions, SAE) side by side on the leak organism, with --small the SAE removers' quick check")
    return p


def _positions(text: str) -> str | tuple:
    items: list = []
    for tok in (t.strip() for t in text.split(",") if t.strip()):
        items.append(int(tok) if tok.lstrip("-").isdigit() else tok)
    return items[0] if len(items) == 1 else tuple(items)


def _demo(args: argparse.Namespace) -> int:
    from probekit.demo import DemoConfig, print_summary, run_demo

    print_summary(run_demo(DemoConfig(out=args.out, seed=args.seed, steps=args.steps)))
    return 0


def _check_scan_inputs(args: argparse.Namespace):
    """Every input of ``probekit scan`` that needs no model, checked with the library's own checks (and
    its exception types): the folder, the label and answer CSVs (columns, one row per image, rows
    naming absent images), every image file (header / structure, see ``check_images``), at least two
    classes and enough images per class for the folds, the positions. Returns the resolved images and
    labels and the answers; the model is loaded only after this."""
    import warnings

    from probekit.data.sources import csv_column_for_folder, resolve_images
    from probekit.errors import InputError, ProbekitWarning
    from probekit.hooks.positions import normalize_positions

    if not Path(args.images).is_dir():
        raise InputError(f"--images {args.images} is not a folder", fix="pass a folder of image files")
    for flag, path in (("--labels", args.labels), ("--answers", args.answers)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{flag} {path} does not exist", fix="pass a CSV file")
    if args.label_column is not None and args.labels is None:
        raise InputError("--label-column names a column of --labels, but no --labels was given",
                         fix="pass --labels CSV, or drop --label-column "
                             "(a <folder>/<label>/<image> layout needs neither)")
    if args.image_column is not None and args.labels is None and args.answers is None:
        raise InputError("--image-column names a column of --labels / --answers, but neither was given",
                         fix="pass --labels CSV (or --answers CSV), or drop --image-column")
    normalize_positions(_positions(args.positions))
    if args.readouts is not None:
        from probekit.readout.plugins import resolve_readouts

        resolve_readouts(args.readouts)  # an unknown name: before the images are read or the model loaded
    missing = "warn" if args.allow_missing_images else "error"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProbekitWarning)
        answers = args.answer
        if args.answers is not None:
            answers = csv_column_for_folder(args.answers, args.images, "answer", "answer",
                                            image_column=args.image_column, missing_images=missing)
        src = resolve_images(args.images, args.labels, image_column=args.image_column,
                             label_column=args.label_column, missing_images=missing)
    for w in caught:
        if issubclass(w.category, ProbekitWarning):
            print(f"probekit scan: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if src.labels is not None:
        from probekit.readout.leakage import check_labels

        check_labels(src.labels, len(src.images), cv=args.cv, seed=args.seed)
    return src, answers


def _scan(args: argparse.Namespace) -> int:
    import probekit

    src, answers = _check_scan_inputs(args)  # everything that can be wrong without the model: before loading it
    model = probekit.load(args.model, device=args.device, dtype=args.dtype)
    report = probekit.scan(model, src, prompts=args.prompts, targets=args.targets,
                           points=[p.strip() for p in args.points.split(",")], positions=_positions(args.positions),
                           cv=args.cv, seed=args.seed, batch_size=args.batch_size, store=args.store, answers=answers,
                           readouts=args.readouts)
    if report is None:  # a rank other than 0 of a distributed scan: rank 0 writes the report
        return 0
    report.save(args.out)
    if args.json:
        from probekit.files import atomic_write

        atomic_write(args.json, report.to_json(), "report JSON")
    print(report.summary())
    print(f"report: {args.out}")
    return 0


def _points(args: argparse.Namespace) -> int:
    import probekit

    model = probekit.load(args.model)
    for p in model.points(args.pattern):
        print(p)
    return 0


def _collect(args: argparse.Namespace) -> int:
    import probekit
    from probekit.data.images import check_images
    from probekit.data.sources import IMAGE_EXTENSIONS
    from probekit.hooks.positions import normalize_positions

    folder = Path(args.images)
    if not folder.is_dir():
        raise probekit.errors.InputError(f"--images {folder} is not a folder", fix="pass a folder of image files")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise probekit.errors.ImageError(f"--images {folder} holds no image files",
                                         fix=f"pass a folder of images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    files = check_images(files)  # every file opens, before the model loads (collect does not check them again)
    normalize_positions(_positions(args.positions))
    model = probekit.load(args.model, device=args.device, dtype=args.dtype)
    store = probekit.collect(model, files, args.prompts, points=[p.strip() for p in args.points.split(",")],
                             positions=_positions(args.positions), store=args.out, batch_size=args.batch_size)
    print(f"{store}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from probekit.studies import Options, get_study, run

    return run(get_study(args.name), Options(small=args.small, full=args.full, sae=args.sae, out=args.out,
                                             docs=args.docs))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probekit`` console script."""
    from probekit.errors import ProbekitError

    try:
        args = _parser().parse_args(argv)
    except _ModelMissing as missing:
        exc = _model_missing(missing.command, missing.others)
        print(f"probekit {missing.command}: error: {exc.problem} ({exc.fix})", file=sys.stderr)
        return 2
    try:
        if args.command in ("scan", "points", "collect", "membership") and not args.model:  # --model ""
            raise _model_missing(args.command)
        if args.command == "membership":
            from probekit.cli_membership import run

            return run(args)
        return {"demo": _demo, "scan": _scan, "points": _points, "collect": _collect,
                "study": _study}[args.command](args)
    except ProbekitError as exc:
        print(f"probekit {args.command}: error: {exc.problem}" + (f" ({exc.fix})" if exc.fix else ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
