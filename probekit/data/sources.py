"""Where images and labels come from: lists, ImageFolder directories, label CSVs, HF datasets."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ImageError, LabelError
from .images import check_images

__all__ = ["ImageSource", "resolve_images", "read_label_csv", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSource:
    """Checked images, their labels (or None) and a description of where they came from."""

    images: list[Any]
    labels: list[Any] | None
    description: dict = field(default_factory=dict)
    names: list[str] | None = None


def _folder(path: Path) -> ImageSource:
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        files, labels = [], []
        for d in subdirs:
            for f in sorted(d.rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(f)
                    labels.append(d.name)
        desc = {"source": f"ImageFolder {path}", "classes": [d.name for d in subdirs]}
        if not files:
            raise ImageError(f"{path} has class folders but no image files in them",
                             fix=f"put images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {path}/<label>/")
        return ImageSource(files, labels, desc, [str(f.relative_to(path)) for f in files])
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ImageError(f"{path} holds no image files", fix="pass a folder of images, or <folder>/<label>/<images>")
    return ImageSource(files, None, {"source": f"folder {path}"}, [f.name for f in files])


def _dataset(ds: Any, image_column: str | None, label_column: str | None) -> ImageSource:
    cols = list(getattr(ds, "column_names", []) or [])
    img_col = image_column or next((c for c in ("image", "img", "images", "pixel_values") if c in cols), None)
    if img_col is None or img_col not in cols:
        raise ImageError(f"dataset has no image column (columns: {cols})", fix="pass image_column=<name>")
    lab_col = label_column or next((c for c in ("label", "labels", "class", "target") if c in cols), None)
    if label_column is not None and label_column not in cols:
        raise LabelError(f"dataset has no column {label_column!r} (columns: {cols})", fix="pass label_column=<name>")
    images = list(ds[img_col])
    labels = None
    if lab_col is not None:
        labels = list(ds[lab_col])
        feat = getattr(ds, "features", {}).get(lab_col) if hasattr(ds, "features") else None
        names = getattr(feat, "names", None)
        if names:
            labels = [names[i] for i in labels]
    return ImageSource(images, labels, {"source": f"datasets.Dataset ({len(images)} rows, image column {img_col!r}"
                                        + (f", label column {lab_col!r})" if lab_col else ")")})


def read_label_csv(path: str | os.PathLike, names: Sequence[str] | None = None) -> list[str] | dict[str, str]:
    """Read labels from a CSV with a ``label`` column (and optionally ``image``/``file``/``path``).

    With a file column the labels are returned as ``{file name: label}``; without, as a list in
    row order.
    """
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"label file {str(p)!r} does not exist", fix="check the path")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise LabelError(f"label file {p} is empty", fix="write a header 'image,label' and one row per image")
    cols = list(rows[0])
    if "label" not in cols:
        raise LabelError(f"label file {p} has no 'label' column (columns: {cols})", fix="name the label column 'label'")
    key = next((c for c in ("image", "file", "filename", "path") if c in cols), None)
    if key is None:
        return [r["label"] for r in rows]
    return {r[key]: r["label"] for r in rows}


def resolve_images(images: Any, labels: Any = None, image_column: str | None = None,
                   label_column: str | None = None) -> ImageSource:
    """Turn what a user passes into checked images and aligned labels (raises before any model work)."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        src = _folder(Path(images))
    elif hasattr(images, "column_names") and hasattr(images, "__getitem__"):
        src = _dataset(images, image_column, label_column)
    elif isinstance(images, (str, os.PathLike)):
        raise ImageError(f"{str(images)!r} is neither a folder nor a list of images",
                         fix="pass a folder, a list of paths/PIL images, or a datasets.Dataset")
    else:
        src = ImageSource(list(images) if not hasattr(images, "ndim") else images, None, {"source": "in-memory list"})
    src.images = check_images(src.images)
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            src.description["labels"] = f"CSV {labels}"
            read = read_label_csv(labels)
            if isinstance(read, dict):
                if src.names is None:
                    raise LabelError("a label CSV with an image column needs images given as a folder",
                                     fix="drop the image column to label in row order, or pass the folder")
                missing = [nm for nm in src.names if nm not in read and Path(nm).name not in read]
                if missing:
                    raise LabelError(f"label file has no row for {len(missing)} images, e.g. {missing[0]!r}",
                                     fix="add a row per image (column 'image' = path relative to the folder or file name)")
                labels = [read.get(nm, read.get(Path(nm).name)) for nm in src.names]
            else:
                labels = read
        src.labels = list(labels) if not hasattr(labels, "tolist") else labels.tolist()
    if src.labels is not None and len(src.labels) != len(src.images):
        raise LabelError(f"{len(src.images)} images but {len(src.labels)} labels",
                         fix="pass one label per image")
    return src
