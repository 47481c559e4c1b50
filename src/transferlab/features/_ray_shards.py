"""A Ray extraction's folder: ``part-NNNNN.parquet`` shards (the one feature-table codec of
`features._io`, plus a digest column) and the ``_transferlab.json`` manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.json import write_json
from transferlab.exceptions import DatasetError, DatasetNotFoundError, InvalidParameterError
from transferlab.features._io import read_meta, read_vectors, write_vector_table

__all__ = ["MANIFEST_NAME", "SHARD_FORMAT", "SHARD_GLOB", "load_shards"]

#: Bump when the meaning of a shard changes: older folders are then refused, not mixed.
SHARD_FORMAT = 1
MANIFEST_NAME = "_transferlab.json"
SHARD_GLOB = "part-*.parquet"


def _shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"part-{index:05d}.parquet"


def _shard_meta(path: Path) -> dict[str, Any] | None:
    """The metadata a finished shard file records, or None if absent or unreadable."""
    import pyarrow.parquet as pq

    try:
        return read_meta(pq.read_schema(path))
    except (OSError, ValueError):
        return None


def _write_shard(
    path: Path,
    items: list[list[str]],
    rows: list[list[Any]],
    vectors: np.ndarray,
    dim: int,
    meta: dict[str, Any],
) -> None:
    """Write one shard under a temporary name, then rename it: a shard file is always whole."""
    picked = [items[k] for k, _ in rows]
    columns = {
        "path": [it[0] for it in picked],
        "digest": [d for _, d in rows],
        "label": [it[1] for it in picked],
        "split": [it[2] for it in picked],
    }
    X = np.asarray(vectors, np.float32).reshape(len(picked), dim)
    write_vector_table(path, columns, X, meta, path.with_name(f".{path.name}.{os.getpid()}.tmp"))


def load_shards(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a folder written by `extract_with_ray`: X, paths, digests, labels, splits, meta.

    Rows come in shard order (the listing sorted by path). ``pyarrow.parquet.read_table(out_dir)``
    or ``ray.data.read_parquet(out_dir)`` read the same folder too, without the checks below.

    Raises:
        DatasetNotFoundError: `out_dir` holds no manifest.
        DatasetError: the extraction has not finished (interrupted, or still running: shards may
            be missing or left from an older listing), or shard files are missing.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out_dir)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DatasetNotFoundError(f"{folder}: no {MANIFEST_NAME}; not a transferlab shard folder")
    try:
        meta = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{manifest_path}: unreadable ({exc})") from None
    if meta.get("complete") is not True:
        # a run in progress or interrupted: shards missing, or stale ones of an older listing
        raise DatasetError(
            f"{folder}: the extraction did not finish ({MANIFEST_NAME} says complete: false); "
            "run the same extract command again to finish it"
        )
    files = [_shard_path(folder, i) for i in range(int(meta.get("n_shards", 0)))]
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise DatasetError(
            f"{folder}: shard files missing ({', '.join(missing[:3]) or SHARD_GLOB}); run the "
            "same extract command again to recompute them"
        )
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return {
        "X": read_vectors(table, int(meta["dim"]) if "dim" in meta else None),
        "paths": table.column("path").to_pylist(),
        "digests": table.column("digest").to_pylist(),
        "labels": table.column("label").to_pylist(),
        "splits": table.column("split").to_pylist(),
        "meta": meta,
    }


#: Manifest entries that may change between runs into the same folder.
_PER_RUN_KEYS = frozenset({"complete", "n_rows", "n_images", "n_shards", "listing_sha256"})


def _prepare_out_dir(
    out_dir: Path, manifest: dict[str, Any], overwrite: bool, *, mark_unfinished: bool = True
) -> None:
    """Check `out_dir` can take this extraction (refuse another's shards unless `overwrite`),
    clear what must go, and (unless told not to) write the manifest marked unfinished."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidParameterError(
            f"--out {out_dir} is a file; with --engine ray it must be a folder (of Parquet shards)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".part-*.tmp"):  # left by a driver killed while writing
        stale.unlink(missing_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    ours = {MANIFEST_NAME} | {p.name for p in out_dir.glob(SHARD_GLOB)}
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        # a changed listing is fine: shards are checked one by one against their slice
        changed = sorted(
            k for k in manifest if k not in _PER_RUN_KEYS and old.get(k) != manifest[k]
        )
        if changed and not overwrite:
            raise InvalidParameterError(
                f"{out_dir} holds shards of another extraction (differs in: {', '.join(changed)}); "
                "choose another --out folder, or pass --overwrite to replace them"
            )
        wipe = bool(changed)
    elif len(ours) > 1 or others:
        if not overwrite or others:
            raise InvalidParameterError(
                f"--out {out_dir} is not empty and was not written by transferlab's ray engine "
                f"({', '.join((others or sorted(ours))[:3])}...); choose an empty or new folder"
            )
        wipe = True
    else:
        wipe = False
    if mark_unfinished or wipe:  # before any shard goes: a kill must not leave "complete"
        _write_json(manifest_path, {**manifest, "complete": False})
    if wipe:
        for p in out_dir.glob(SHARD_GLOB):
            p.unlink()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_json(tmp, data, sort_keys=True)
    os.replace(tmp, path)
