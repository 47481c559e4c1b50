"""The listing of a Ray extraction: every image named by a folder, CSV, Parquet listing or
fsspec URL, sorted by path, and how a worker gets a local copy of one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transferlab.data import collect_images, is_image_file
from transferlab.exceptions import (
    DatasetError,
    DatasetNotFoundError,
    ImageLoadError,
    InvalidParameterError,
)

__all__ = ["ListedImage", "list_sources"]


@dataclass(frozen=True)
class ListedImage:
    """One image to extract: a local path or an fsspec URL, its label ('' if none) and split."""

    path: str
    label: str = ""
    split: str = ""


def _is_url(path: str) -> bool:
    return "://" in path


def list_sources(
    data: str | os.PathLike[str], *, val_fraction: float = 0.2, seed: int = 0
) -> list[ListedImage]:
    """Every image named by `data`, sorted by path.

    Args:
        data: a dataset folder or CSV (see `collect_images`), a folder of unlabelled images, a
            ``.parquet`` listing (column ``path``; optional ``label`` and ``split``; relative
            paths are taken from the listing's folder), or an fsspec URL (``s3://bucket/photos/``,
            ``gs://...``, ``file:///...``; a folder is searched recursively, ``*`` globs work;
            images inside class subfolders take the subfolder's name as label).
        val_fraction, seed: the validation split of a labelled folder without one.

    Raises:
        DatasetNotFoundError: the path or URL does not exist.
        DatasetError: no images, or a listing without a ``path`` column.
    """
    text = os.fspath(data)
    if _is_url(text) and not text.lower().endswith(".parquet"):
        items = _list_url(text)
    elif text.lower().endswith(".parquet"):
        items = _list_parquet(text)
    else:
        samples, splits = collect_images(data, val_fraction=val_fraction, seed=seed)
        items = [
            ListedImage(os.path.abspath(s.path), s.label or "", split)
            for s, split in zip(samples, splits, strict=True)
        ]
    if not items:
        raise DatasetError(f"{text}: no images to extract")
    return sorted(items, key=lambda it: it.path)


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise InvalidParameterError(
            "reading URLs needs fsspec (and the filesystem's package, e.g. s3fs): pip install fsspec"
        ) from None
    return fsspec


def _url_to_fs(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and inner path for `url`; a missing filesystem package (s3fs, gcsfs)
    or an unknown protocol is a clear error naming the URL."""
    try:
        return _fsspec().core.url_to_fs(url)  # type: ignore[no-any-return]
    except (ImportError, ValueError) as exc:
        raise InvalidParameterError(f"cannot open {url!r}: {exc}") from None


def _list_url(url: str) -> list[ListedImage]:
    fs, root = _url_to_fs(url)
    if any(c in root for c in "*?["):
        found = list(fs.glob(root))
        base = root.split("*")[0].rsplit("/", 1)[0]
    elif fs.isfile(root):
        found, base = [root], root.rsplit("/", 1)[0]
    elif fs.isdir(root):
        found, base = list(fs.find(root)), root.rstrip("/")
    else:
        raise DatasetNotFoundError(f"{url}: no such file or folder")
    images = sorted(p for p in found if is_image_file(p))
    rel = [p[len(base) :].strip("/").split("/") for p in images]
    # root/<class>/<image> everywhere, with two classes or more: a labelled folder
    labelled = bool(rel) and all(len(r) == 2 for r in rel) and len({r[0] for r in rel}) > 1
    return [
        ListedImage(fs.unstrip_protocol(p), r[0] if labelled else "")
        for p, r in zip(images, rel, strict=True)
    ]


def _list_parquet(path: str) -> list[ListedImage]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if _is_url(path):
        fs, local = _url_to_fs(path)
        if not fs.isfile(local):
            raise DatasetNotFoundError(f"{path}: no such listing")
        base = path.rsplit("/", 1)[0]
        opener: Any = fs.open(local, "rb")
    else:
        if not os.path.exists(path):
            raise DatasetNotFoundError(f"{path}: no such listing")
        base = os.path.dirname(os.path.abspath(path))
        opener = open(path, "rb")  # noqa: SIM115  (closed below)
    try:
        with opener as fh:
            table = pq.read_table(fh)
    except (OSError, pa.ArrowException) as exc:  # ArrowInvalid: not Parquet at all
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from None
    cols = {c.lower(): c for c in table.column_names}
    path_col = next((cols[c] for c in ("path", "file", "filename", "image") if c in cols), None)
    if path_col is None:
        raise DatasetError(
            f"{path}: a Parquet listing needs a 'path' column; found {', '.join(table.column_names)}"
        )

    def column(name: str | None) -> list[str]:
        if name is None:
            return [""] * len(table)
        return ["" if v is None else str(v) for v in table.column(name).to_pylist()]

    paths = column(path_col)
    labels = column(next((cols[c] for c in ("label", "class") if c in cols), None))
    splits = column(cols.get("split"))
    items = []
    for p, label, split in zip(paths, labels, splits, strict=True):
        if not p:
            raise DatasetError(f"{path}: empty path in the listing")
        if not (_is_url(p) or os.path.isabs(p)):
            p = f"{base}/{p}" if _is_url(base) else os.path.join(base, p)
        items.append(ListedImage(p, label, split.lower()))
    return items


def _digest_items(items: Sequence[ListedImage]) -> str:
    blob = json.dumps([[it.path, it.label, it.split] for it in items], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _localize(path: str, tmpdir: str, k: int) -> str:
    """A local file holding `path`'s bytes: the path itself, or a copy of a remote URL."""
    if not _is_url(path):
        return path
    fs, inner = _fsspec().core.url_to_fs(path)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return inner
    local = os.path.join(tmpdir, f"{k}{os.path.splitext(inner)[1]}")
    try:
        with fs.open(inner, "rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except Exception as exc:  # any filesystem's error: the image is unavailable
        raise ImageLoadError(path, f"cannot fetch: {type(exc).__name__}: {exc}") from None
    return local
