"""Feature files: the one Parquet vector codec (feature files and Ray shards) and ``.npz``.

A Parquet feature table is string columns plus ``vector: fixed_size_list<float32>[dim]``, with a
JSON object under the schema metadata key ``transferlab``. `save_features` and the Ray shards
(`transferlab.features.ray`) both write it through `write_vector_table` and read it back
through `read_vectors`; files written before this module existed (including empty feature
files, whose vectors were ``list<float32>``) read the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.json import dumps
from transferlab.exceptions import InvalidParameterError

__all__ = [
    "META_KEY",
    "load_features",
    "read_meta",
    "read_vectors",
    "save_features",
    "write_vector_table",
]

#: Schema-metadata key holding the JSON description of a Parquet feature table.
META_KEY = b"transferlab"
_VECTOR = "vector"


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidParameterError(
            "writing .parquet needs pyarrow: pip install 'transferlab[parquet]'"
        ) from exc
    return pa, pq


def write_vector_table(
    path: Path,
    columns: Mapping[str, Sequence[str]],
    X: np.ndarray,
    meta: Mapping[str, Any],
    tmp: Path,
) -> None:
    """Write string `columns` and vectors `X` (n x dim) as one Parquet table, `meta` in its
    schema metadata; written under `tmp`, then renamed, so `path` is never half-written."""
    pa, pq = _pyarrow()
    X = np.ascontiguousarray(X, np.float32)
    dim = X.shape[1] if X.ndim == 2 else 0
    table = pa.table(
        {
            **{name: pa.array(list(values), pa.string()) for name, values in columns.items()},
            _VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), pa.float32()), dim),
        }
    )
    table = table.replace_schema_metadata(
        {META_KEY: dumps(dict(meta), indent=None, sort_keys=True)}
    )
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_vectors(table: Any, dim: int | None = None) -> np.ndarray:
    """The ``vector`` column of a feature table as float32 (n x dim); `dim` defaults to the
    column's fixed list size (or, for a variable-size list, the row length)."""
    col = table.column(_VECTOR).combine_chunks()
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32)
    if dim is None:
        dim = getattr(col.type, "list_size", None)
        if dim is None:  # list<float32>: what empty feature files used to hold
            dim = flat.size // len(table) if len(table) else 0
    return flat.reshape(len(table), dim)


def read_meta(schema: Any) -> Any:
    """The JSON value under the schema metadata key (None when there is none)."""
    return json.loads((schema.metadata or {}).get(META_KEY, b"null"))


def save_features(
    path: str | os.PathLike[str],
    X: np.ndarray,
    paths: Sequence[str],
    labels: Sequence[str | None],
    splits: Sequence[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write vectors with their paths, labels and splits to ``.npz`` or ``.parquet``.

    Parquet rows are (path, label, split, vector: fixed-size list<float32>), with `meta` in the
    schema metadata; npz holds arrays ``X``, ``paths``, ``labels``, ``splits`` and ``meta`` (JSON).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels_s = ["" if lab is None else str(lab) for lab in labels]
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".parquet":
        columns = {"path": list(paths), "label": labels_s, "split": list(splits)}
        write_vector_table(out, columns, np.asarray(X), meta or {}, tmp)
    elif out.suffix.lower() == ".npz":
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                X=np.asarray(X, np.float32),
                paths=np.asarray(paths, dtype=str),
                labels=np.asarray(labels_s, dtype=str),
                splits=np.asarray(splits, dtype=str),
                meta=np.asarray(dumps(meta or {}, indent=None, sort_keys=True)),
            )
        os.replace(tmp, out)  # never leave a half-written file under the real name
    else:
        raise InvalidParameterError(f"feature file must end in .npz or .parquet, got {out.name!r}")
    return out


def load_features(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by `save_features`: X, paths, labels, splits and meta."""
    p = Path(path)
    if p.suffix.lower() == ".parquet":
        _, pq = _pyarrow()
        table = pq.read_table(p)
        return {
            "X": read_vectors(table),
            "paths": table.column("path").to_pylist(),
            "labels": table.column("label").to_pylist(),
            "splits": table.column("split").to_pylist(),
            "meta": read_meta(table.schema) or {},
        }
    with np.load(p, allow_pickle=False) as z:
        return {
            "X": z["X"],
            "paths": z["paths"].tolist(),
            "labels": z["labels"].tolist(),
            "splits": z["splits"].tolist(),
            "meta": json.loads(str(z["meta"])),
        }
