"""The ``probekit`` command line.

``probekit demo``: build a tiny offline LLaVA, record its residual stream, print a summary.
``probekit points --model PATH``: list a model's hook points.
``probekit collect --model PATH --images DIR --out STORE``: record points to a disk store.

Bad arguments exit with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probekit", description="Find what a vision-language model silently knows, and remove it.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build a tiny offline VLM, record its residual stream, print a summary")
    d.add_argument("--out", default="probekit-demo", help="folder for the demo's files (default: probekit-demo)")
    d.add_argument("--n", type=int, default=64, help="number of synthetic images (default: 64)")
    d.add_argument("--seed", type=int, default=0)

    pts = sub.add_parser("points", help="list the hook points of a model")
    pts.add_argument("--model", required=True, help="checkpoint directory or hub id")
    pts.add_argument("--pattern", default=None, help='glob, e.g. "lm.*.resid"')

    c = sub.add_parser("collect", help="record hook points for a folder of images into a disk store")
    c.add_argument("--model", required=True, help="checkpoint directory or hub id")
    c.add_argument("--images", required=True, help="folder of image files (searched recursively)")
    c.add_argument("--out", required=True, help="store directory (resumed if it exists)")
    c.add_argument("--prompt", default=None, help="prompt used with every image")
    c.add_argument("--points", default="lm.*.resid", help='comma-separated globs (default "lm.*.resid")')
    c.add_argument("--positions", default="last", help='comma-separated positions (default "last")')
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--device", default="cpu")
    c.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto")
    return p


def _positions(text: str) -> str | tuple:
    items: list = []
    for tok in (t.strip() for t in text.split(",") if t.strip()):
        items.append(int(tok) if tok.lstrip("-").isdigit() else tok)
    return items[0] if len(items) == 1 else tuple(items)


def _demo(args: argparse.Namespace) -> int:
    import probekit
    from probekit.models import tiny

    t0 = time.perf_counter()
    out = Path(args.out)
    model_dir = out / "tiny-llava"
    if not (model_dir / "config.json").exists():
        tiny.build("llava", model_dir, seed=args.seed)
    model = probekit.load(model_dir)
    images = tiny.fixture_images(args.n, 32, seed=args.seed)
    store = probekit.collect(model, images, "What is in the image?", positions=("last", "image_mean"),
                             store=out / "activations", progress=True)
    print(f"model: {model}")
    print(f"store: {store}")
    for point in store.points:
        x = store[point].float()
        print(f"  {point:<12} {tuple(x.shape)}  positions={store.positions(point)}  "
              f"mean|x|={x.abs().mean():.4f}  std={x.std():.4f}")
    print(f"done in {time.perf_counter() - t0:.1f}s; activations in {out / 'activations'} (safetensors + index.json)")
    return 0


def _points(args: argparse.Namespace) -> int:
    import probekit

    model = probekit.load(args.model)
    for p in model.points(args.pattern):
        print(p)
    return 0


def _collect(args: argparse.Namespace) -> int:
    import probekit

    folder = Path(args.images)
    if not folder.is_dir():
        raise probekit.errors.InputError(f"--images {folder} is not a folder", fix="pass a folder of image files")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in _IMAGE_EXT)
    model = probekit.load(args.model, device=args.device, dtype=args.dtype)
    store = probekit.collect(model, files, args.prompt, points=[p.strip() for p in args.points.split(",")],
                             positions=_positions(args.positions), store=args.out, batch_size=args.batch_size)
    print(f"{store}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probekit`` console script."""
    args = _parser().parse_args(argv)
    from probekit.errors import ProbekitError

    try:
        return {"demo": _demo, "points": _points, "collect": _collect}[args.command](args)
    except ProbekitError as exc:
        print(f"probekit {args.command}: error: {exc.problem}" + (f" ({exc.fix})" if exc.fix else ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
