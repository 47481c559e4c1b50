"""A fitted probe on disk without pickle: its object tree as JSON, its arrays in an ``.npz``
read with ``allow_pickle=False``, and only the classes a probe is made of allowed back.

Why not pickle: loading a pickle runs whatever code it names, so a model directory from
someone else could run anything (issue 21). Why not skops, which does the same job: importing
``skops.io`` imports every scikit-learn module (and torch with them), about 5 s, which a warm
`fit` that loads no model cannot pay (issue 17). A probe is a handful of scikit-learn
estimators holding arrays and numbers; this format stores exactly that, and rebuilds each
object from an allowlist without calling anything the file names.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.exceptions import ModelFormatError

__all__ = ["PROBE_CLASSES", "dump_probe", "load_probe"]

#: every class a saved probe may contain (module path, class name); nothing else loads
PROBE_CLASSES = frozenset(
    {
        "transferlab.probe.LinearProbe",
        "transferlab.probe.MultiLabelProbe",
        "transferlab.probe.DomainAdaptedProbe",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._data.Normalizer",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.preprocessing._label.LabelBinarizer",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.linear_model._logistic.LogisticRegressionCV",
        "sklearn.svm._classes.LinearSVC",
        "sklearn.neighbors._nearest_centroid.NearestCentroid",
        "sklearn.multiclass.OneVsRestClassifier",
    }
)
_FORMAT = "transferlab-probe-1"


def _path(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


class _Writer:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, float)) and type(obj) in (int, float):
            if isinstance(obj, float) and not np.isfinite(obj):
                return {"float": repr(obj)}
            return obj
        if isinstance(obj, np.generic):
            return {"scalar": self._array(np.asarray(obj))}
        if isinstance(obj, np.ndarray) and obj.dtype == object:  # text labels, None entries
            items = [self.encode(v.item() if isinstance(v, np.generic) else v) for v in obj.ravel()]
            return {"objects": items, "shape": list(obj.shape)}
        if isinstance(obj, np.ndarray):
            return {"array": self._array(obj)}
        if isinstance(obj, (list, tuple)):
            return {"list" if isinstance(obj, list) else "tuple": [self.encode(v) for v in obj]}
        if isinstance(obj, dict):
            return {"dict": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        path = _path(obj)
        if path in PROBE_CLASSES:
            return {"object": path, "state": self.encode(dict(vars(obj)))}
        raise ModelFormatError(f"cannot save a probe holding a {path} (not a known probe part)")

    def _array(self, a: np.ndarray) -> dict[str, Any]:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a
        return {"key": key}


def dump_probe(probe: Any, path: str | os.PathLike[str]) -> None:
    """Write `probe` to `path` (a zip of ``tree.json`` and ``arrays.npz``)."""
    w = _Writer()
    tree = {"format": _FORMAT, "probe": w.encode(probe)}
    buf = io.BytesIO()
    np.savez(buf, **w.arrays)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("tree.json", json.dumps(tree))
        z.writestr("arrays.npz", buf.getvalue())


def load_probe(path: str | os.PathLike[str]) -> Any:
    """Read a probe written by `dump_probe`. Objects are rebuilt from `PROBE_CLASSES` only,
    without calling their constructors or anything else the file names.

    Raises:
        ModelFormatError: not such a file, damaged, or naming a class outside the allowlist.
    """
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            tree = json.loads(z.read("tree.json"))
            with np.load(io.BytesIO(z.read("arrays.npz")), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFormatError(f"{p} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(tree, dict) or tree.get("format") != _FORMAT:
        raise ModelFormatError(f"{p} is not a transferlab probe file")

    def decode(node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise ModelFormatError(f"{p}: unexpected entry {str(node)[:80]}")
        if "float" in node:
            return float(node["float"])
        if "array" in node or "scalar" in node:
            ref = node.get("array") or node.get("scalar")
            a = arrays[ref["key"]]
            return a[()] if "scalar" in node else a
        if "objects" in node:
            out = np.empty(len(node["objects"]), dtype=object)
            out[:] = [decode(v) for v in node["objects"]]
            return out.reshape(node["shape"])
        if "list" in node:
            return [decode(v) for v in node["list"]]
        if "tuple" in node:
            return tuple(decode(v) for v in node["tuple"])
        if "dict" in node:
            return {_key(decode(k)): decode(v) for k, v in node["dict"]}
        if "object" in node:
            name = node["object"]
            if name not in PROBE_CLASSES:
                raise ModelFormatError(
                    f"{p} names {name!r}, which is not a transferlab probe part: refused, "
                    "since building it could run code"
                )
            module, _, cls_name = name.rpartition(".")
            cls = getattr(importlib.import_module(module), cls_name)
            obj = cls.__new__(cls)
            obj.__dict__.update(decode(node["state"]))
            return obj
        raise ModelFormatError(f"{p}: unexpected entry {str(node)[:80]}")

    try:
        return decode(tree["probe"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelFormatError(f"{p} is damaged ({type(exc).__name__}: {exc})") from None


def _key(k: Any) -> Any:
    """Dict keys come back hashable (lists from JSON as tuples)."""
    return tuple(k) if isinstance(k, list) else k
