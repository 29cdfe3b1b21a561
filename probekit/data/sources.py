"""Where images and labels come from: lists, ImageFolder directories, label CSVs, HF datasets."""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ImageError, InputError, LabelError, ProbekitWarning
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


def _labels_from_frame(frame: Any, label_column: str | None, names: list[str] | None,
                       missing_images: str = "warn") -> list[Any]:
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
    return _match_names(dict(zip(map(str, _column(frame, key)), values)), names, where="labels DataFrame",
                        missing_images=missing_images)


def _first(items: Sequence[str], k: int = 3) -> str:
    """The first ``k`` names quoted, and how many more: ``'a.png', 'b.png', 'c.png' and 2 more``."""
    shown = ", ".join(repr(str(x)) for x in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


MISSING_IMAGES = ("error", "warn")


def _match_names(read: dict[str, Any], names: list[str], what: str = "labels", where: str | None = None,
                 missing_images: str = "warn") -> list[Any]:
    """One value of ``read`` ({file name: value}, from a CSV or a table) per image name of a folder.

    An image without a row is always an error. Rows naming files that are not among the images
    (a 40-row CSV on a 35-image folder) raise a :class:`LabelError` with ``missing_images="error"``
    and are skipped with a :class:`ProbekitWarning` with ``"warn"``; both name the count and the
    first few files. ``where`` says where the rows come from ("label file x.csv") and the folder.
    """
    if missing_images not in MISSING_IMAGES:
        raise InputError(f"missing_images must be one of {MISSING_IMAGES}, got {missing_images!r}",
                         fix='use missing_images="error" or "warn"')
    missing = [nm for nm in names if nm not in read and Path(nm).name not in read]
    if missing:
        raise LabelError(f"the {what} have no row for {len(missing)} images{' (' + where + ')' if where else ''}: "
                         f"{_first(missing)}",
                         fix="add a row per image (column 'image' = path relative to the folder or file name), "
                             "or move those images out of the folder")
    used = set(names) | {Path(nm).name for nm in names}
    unused = [k for k in read if k not in used]
    if unused:
        text = (f"{len(unused)} rows of the {what}{' (' + where + ')' if where else ''} name images that are not "
                f"in the folder: {_first(unused)}")
        if missing_images == "error":
            raise LabelError(text, fix="add those images to the folder or remove their rows; to scan the images "
                                       "that are there, pass --allow-missing-images (probekit scan) or "
                                       "missing_images='warn'")
        warnings.warn(f"{text}; they are skipped", ProbekitWarning, stacklevel=3)
    return [read.get(nm, read.get(Path(nm).name)) for nm in names]


_FILE_COLUMNS = ("image", "file", "filename", "path")


_PICK = {"label": "label_column= (probekit scan --label-column)",
         "image": "image_column= (probekit scan --image-column)"}


def read_csv_column(path: str | os.PathLike, column: str = "label", what: str = "label", key: str | None = None
                    ) -> list[str] | dict[str, str]:
    """Read one column of a CSV (and optionally the column naming each row's image file).

    The file column is ``key`` when given (an error if the CSV lacks it), else the first of
    ``image``/``file``/``filename``/``path`` present. With a file column the values are returned
    as ``{file name: value}`` (two rows for one file with different values are an error); without,
    as a list in row order. ``what`` names the file in errors ("label", "answer").
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
        pick = f", or pass the name of the column that holds them: {_PICK[what]}" if what in _PICK else ""
        raise LabelError(f"{what} file {p} has no {column!r} column (columns: {cols})",
                         fix=f"name the {what} column {column!r}{pick}")
    if key is not None and key not in cols:
        raise LabelError(f"{what} file {p} has no {key!r} column naming the image files (columns: {cols})",
                         fix=f"name that column {key!r}, or pass its name: {_PICK['image']}")
    key = key or next((c for c in _FILE_COLUMNS if c in cols), None)
    if key is None:
        return [r[column] for r in rows]
    out: dict[str, str] = {}
    clash = []
    for r in rows:
        if r[key] in out and out[r[key]] != r[column]:
            clash.append(r[key])
        out[r[key]] = r[column]
    if clash:
        raise LabelError(f"{what} file {p} has rows that disagree for {len(clash)} images: {_first(clash)}",
                         fix="keep one row per image")
    return out


def read_label_csv(path: str | os.PathLike, names: Sequence[str] | None = None, label_column: str | None = None,
                   image_column: str | None = None) -> list[str] | dict[str, str]:
    """Read labels from a CSV with a ``label`` column (or ``label_column``) and optionally a file
    column (``image_column``, else ``image``/``file``/``filename``/``path``).

    With a file column the labels are returned as ``{file name: label}``; without, as a list in
    row order.
    """
    return read_csv_column(path, label_column or "label", "label", key=image_column)


def csv_column_for_folder(path: str | os.PathLike, folder: str | os.PathLike, column: str, what: str,
                          image_column: str | None = None, missing_images: str = "warn") -> list[str]:
    """One value per image of ``folder`` (in the order :func:`resolve_images` lists them) from a CSV.

    Rows are matched by their file column (``image_column``, else the first of image/file/filename/path;
    path relative to the folder, or file name), or taken in row order when the CSV has none. Rows
    naming files not in the folder: see ``missing_images`` of :func:`resolve_images`. Reads no image.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "imgs").mkdir()
        >>> for n in ("b.png", "a.png"): _ = (d / "imgs" / n).write_bytes(b"")
        >>> _ = (d / "ans.csv").write_text("image,answer\\na.png,alice\\nb.png,bob\\n")
        >>> csv_column_for_folder(d / "ans.csv", d / "imgs", "answer", "answer")
        ['alice', 'bob']
    """
    names = _folder(Path(folder)).names
    read = read_csv_column(path, column, what, key=image_column)
    values = (_match_names(read, names, what + "s", f"{what} file {path}, folder {folder}", missing_images)
              if isinstance(read, dict) else read)
    if len(values) != len(names):
        raise LabelError(f"{len(names)} images in {folder} but {len(values)} rows in {what} file {path}",
                         fix="write one row per image, or add an 'image' column naming each file")
    return values


def resolve_images(images: Any, labels: Any = None, image_column: str | None = None,
                   label_column: str | None = None, missing_images: str = "warn") -> ImageSource:
    """Turn what a user passes into checked images and aligned labels (raises before any model work).

    ``labels`` may be a CSV; its label column is ``label_column`` (default ``label``) and, with a
    folder of images, its file column ``image_column`` (default: the first of image/file/filename/path;
    without one the rows are taken in order). Every image needs a row; rows naming files that are
    not in the folder are skipped with a :class:`~probekit.errors.ProbekitWarning`
    (``missing_images="warn"``) or raise a :class:`~probekit.errors.LabelError` (``"error"``). The
    labels are read before the image files are checked, so a wrong column is reported at once.
    An :class:`ImageSource` (already resolved) is returned as it is.
    """
    if isinstance(images, ImageSource):
        if labels is not None:
            raise InputError("labels given twice: with the resolved images and as labels=",
                             fix="pass the labels to resolve_images, or leave labels=None")
        return images
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        src = _folder(Path(images))
    elif _is_frame(images) or (hasattr(images, "column_names") and hasattr(images, "__getitem__")):
        if isinstance(labels, str) and label_column is None and labels in _columns(images):
            label_column, labels = labels, None  # labels="<column>"
        src = _table(images, image_column, label_column)
    elif isinstance(images, (str, os.PathLike)):
        raise ImageError(f"{str(images)!r} is neither a folder nor a list of images",
                         fix="pass a folder, a list of paths/PIL images, a pandas DataFrame or a datasets.Dataset")
    else:  # in memory: checked now (a single image or a non-sequence is refused before len() is taken)
        src = ImageSource(check_images(images), None, {"source": "in-memory list"})
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            src.description["labels"] = f"CSV {labels}"
            read = read_label_csv(labels, label_column=label_column, image_column=image_column if src.names else None)
            if isinstance(read, dict):
                if src.names is None:
                    raise LabelError("a label CSV with an image column needs images given as a folder",
                                     fix="drop the image column to label in row order, or pass the folder")
                labels = _match_names(read, src.names, where=f"label file {labels}, folder {images}",
                                      missing_images=missing_images)
            else:
                labels = read
        elif _is_frame(labels):  # list(df) would be its column names
            src.description["labels"] = "DataFrame"
            labels = _labels_from_frame(labels, label_column, src.names, missing_images)
        src.labels = list(labels) if not hasattr(labels, "tolist") else labels.tolist()
    if src.labels is not None and len(src.labels) != len(src.images):
        raise LabelError(f"{len(src.images)} images but {len(src.labels)} labels",
                         fix="pass one label per image" + (" (one row per image in the label CSV, or add an 'image' "
                                                           "column naming each file)" if src.names else ""))
    src.images = check_images(src.images)  # after the labels: a wrong CSV column is reported before any file is opened
    return src
