"""Where images and labels come from: lists, ImageFolder directories, label CSVs, HF datasets."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ImageError, LabelError
from .images import check_images

__all__ = ["ImageSource", "resolve_images", "read_label_csv", "read_csv_column", "csv_column_for_folder",
           "IMAGE_EXTENSIONS"]

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


_IMAGE_COLUMNS = ("image", "img", "images", "pixel_values", "path", "file", "filename", "image_path")
_LABEL_COLUMNS = ("label", "labels", "class", "target")


def _is_frame(x: Any) -> bool:
    """A pandas DataFrame (checked by duck type: pandas is only imported when it is used)."""
    return hasattr(x, "columns") and hasattr(x, "iloc") and not hasattr(x, "column_names")


def _columns(table: Any) -> list[str]:
    return [str(c) for c in table.columns] if _is_frame(table) else list(getattr(table, "column_names", []) or [])


def _column(table: Any, name: str) -> list[Any]:
    return table[name].tolist() if _is_frame(table) else list(table[name])


def _cell(x: Any) -> Any:
    """An image cell as stored by datasets / parquet (``{"bytes": ..., "path": ...}``) becomes a PIL image."""
    if isinstance(x, dict) and ("bytes" in x or "path" in x):
        if x.get("bytes"):
            import io

            from PIL import Image

            return Image.open(io.BytesIO(x["bytes"]))
        return x.get("path")
    return x


def _table(table: Any, image_column: str | None, label_column: str | None) -> ImageSource:
    """A pandas DataFrame or a ``datasets.Dataset``: one row per image, columns for image and label."""
    kind = "DataFrame" if _is_frame(table) else "datasets.Dataset"
    cols = _columns(table)
    if image_column is not None and image_column not in cols:
        raise ImageError(f"the {kind} has no column {image_column!r} (columns: {cols})",
                         fix=f"pass image_column= one of {cols}")
    img_col = image_column or next((c for c in _IMAGE_COLUMNS if c in cols), None)
    if img_col is None:
        raise ImageError(f"the {kind} has no image column (columns: {cols})",
                         fix="pass image_column=<name of the column holding images or file paths>")
    if label_column is not None and label_column not in cols:
        raise LabelError(f"the {kind} has no column {label_column!r} (columns: {cols})",
                         fix=f"pass label_column= one of {cols}")
    lab_col = label_column or next((c for c in _LABEL_COLUMNS if c in cols), None)
    images = [_cell(x) for x in _column(table, img_col)]
    labels = None
    if lab_col is not None:
        labels = _column(table, lab_col)
        feat = table.features.get(lab_col) if hasattr(table, "features") else None
        names = getattr(feat, "names", None)  # datasets.ClassLabel: ints -> class names
        if names:
            labels = [names[i] for i in labels]
    n = len(images)
    desc = {"source": f"{kind} ({n} rows, image column {img_col!r}" + (f", label column {lab_col!r})" if lab_col else ")")}
    return ImageSource(images, labels, desc)


def _labels_from_frame(frame: Any, label_column: str | None, names: list[str] | None) -> list[Any]:
    """``labels=`` given as a DataFrame: its label column, matched to folder files when it has a file column."""
    cols = _columns(frame)
    if label_column is not None and label_column not in cols:
        raise LabelError(f"the labels DataFrame has no column {label_column!r} (columns: {cols})",
                         fix=f"pass label_column= one of {cols}")
    col = label_column or next((c for c in _LABEL_COLUMNS if c in cols), None) or (cols[0] if len(cols) == 1 else None)
    if col is None:
        raise LabelError(f"the labels DataFrame has no label column (columns: {cols})",
                         fix="name it 'label', pass label_column=<name>, or pass labels=df[<name>]")
    values = _column(frame, col)
    key = next((c for c in ("image", "file", "filename", "path") if c in cols), None)
    if key is None or names is None:
        return values
    return _match_names(dict(zip(map(str, _column(frame, key)), values)), names)


def _match_names(read: dict[str, Any], names: list[str], what: str = "labels") -> list[Any]:
    missing = [nm for nm in names if nm not in read and Path(nm).name not in read]
    if missing:
        raise LabelError(f"the {what} have no row for {len(missing)} images, e.g. {missing[0]!r}",
                         fix="add a row per image (column 'image' = path relative to the folder or file name)")
    return [read.get(nm, read.get(Path(nm).name)) for nm in names]


_FILE_COLUMNS = ("image", "file", "filename", "path")


def read_csv_column(path: str | os.PathLike, column: str = "label", what: str = "label"
                    ) -> list[str] | dict[str, str]:
    """Read one column of a CSV (and optionally an ``image``/``file``/``filename``/``path`` column).

    With a file column the values are returned as ``{file name: value}``; without, as a list in
    row order. ``what`` names the file in errors ("label", "answer").
    """
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"{what} file {str(p)!r} does not exist", fix="check the path")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise LabelError(f"{what} file {p} is empty", fix=f"write a header 'image,{column}' and one row per image")
    cols = list(rows[0])
    if column not in cols:
        raise LabelError(f"{what} file {p} has no {column!r} column (columns: {cols})",
                         fix=f"name the {what} column {column!r}")
    key = next((c for c in _FILE_COLUMNS if c in cols), None)
    if key is None:
        return [r[column] for r in rows]
    return {r[key]: r[column] for r in rows}


def read_label_csv(path: str | os.PathLike, names: Sequence[str] | None = None) -> list[str] | dict[str, str]:
    """Read labels from a CSV with a ``label`` column (and optionally ``image``/``file``/``path``).

    With a file column the labels are returned as ``{file name: label}``; without, as a list in
    row order.
    """
    return read_csv_column(path, "label", "label")


def csv_column_for_folder(path: str | os.PathLike, folder: str | os.PathLike, column: str, what: str) -> list[str]:
    """One value per image of ``folder`` (in the order :func:`resolve_images` lists them) from a CSV.

    Rows are matched by their file column (path relative to the folder, or file name), or taken
    in row order when the CSV has none. Reads no image.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "imgs").mkdir()
        >>> for n in ("b.png", "a.png"): _ = (d / "imgs" / n).write_bytes(b"")
        >>> _ = (d / "ans.csv").write_text("image,answer\\na.png,alice\\nb.png,bob\\n")
        >>> csv_column_for_folder(d / "ans.csv", d / "imgs", "answer", "answer")
        ['alice', 'bob']
    """
    names = _folder(Path(folder)).names
    read = read_csv_column(path, column, what)
    values = _match_names(read, names, what + "s") if isinstance(read, dict) else read
    if len(values) != len(names):
        raise LabelError(f"{len(names)} images in {folder} but {len(values)} rows in {what} file {path}",
                         fix="write one row per image, or add an 'image' column naming each file")
    return values


def resolve_images(images: Any, labels: Any = None, image_column: str | None = None,
                   label_column: str | None = None) -> ImageSource:
    """Turn what a user passes into checked images and aligned labels (raises before any model work)."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        src = _folder(Path(images))
    elif _is_frame(images) or (hasattr(images, "column_names") and hasattr(images, "__getitem__")):
        if isinstance(labels, str) and label_column is None and labels in _columns(images):
            label_column, labels = labels, None  # labels="<column>"
        src = _table(images, image_column, label_column)
    elif isinstance(images, (str, os.PathLike)):
        raise ImageError(f"{str(images)!r} is neither a folder nor a list of images",
                         fix="pass a folder, a list of paths/PIL images, a pandas DataFrame or a datasets.Dataset")
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
                labels = _match_names(read, src.names)
            else:
                labels = read
        elif _is_frame(labels):  # list(df) would be its column names
            src.description["labels"] = "DataFrame"
            labels = _labels_from_frame(labels, label_column, src.names)
        src.labels = list(labels) if not hasattr(labels, "tolist") else labels.tolist()
    if src.labels is not None and len(src.labels) != len(src.images):
        raise LabelError(f"{len(src.images)} images but {len(src.labels)} labels",
                         fix="pass one label per image")
    return src
