"""The one JSON encoder: numpy scalars and arrays, paths and dataclasses become plain JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dumps", "json_default", "write_json"]


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for the values our results hold."""
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """`obj` as JSON text through `json_default`."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default)


def write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = False) -> Path:
    """Write `obj` as indented JSON to `path` (the way every run writes metrics.json)."""
    p = Path(path)
    p.write_text(dumps(obj, sort_keys=sort_keys))
    return p
