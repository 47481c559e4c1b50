"""Saved models: a directory any `transferlab predict` can load, and that refuses to load wrongly.

Layout (see DESIGN.md)::

    MODEL_DIR/
      model.json     backbone name + weights digest, layer, pooling, preprocessing, classes, versions
      probe.joblib   the fitted LinearProbe
      metrics.json   the validation metrics at save time

Loading checks the format and library versions and that the backbone weights available now are the
ones the probe was trained on (by digest), so a probe never silently runs on other features.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.exceptions import BackboneMismatchError, ModelFormatError, WeightsNotFoundError
from transferlab.features import FeatureExtractor
from transferlab.probe import LinearProbe

__all__ = ["FORMAT_VERSION", "Prediction", "TransferModel", "load_model"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
PROBE_FILE = "probe.joblib"


def _version() -> str:
    from transferlab import __version__

    return __version__


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


@dataclass
class Prediction:
    """One image's prediction: the top classes with probabilities, or the error that stopped it."""

    path: str
    label: str | None
    probability: float | None
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "probability": self.probability,
            "top": [{"label": c, "probability": p} for c, p in self.top],
            **({"error": self.error} if self.error else {}),
        }


class TransferModel:
    """A feature extractor + a fitted probe: images in, class probabilities out.

    Args:
        extractor: the `FeatureExtractor` (backbone, layer, pool) the probe was trained on.
        probe: a fitted `LinearProbe`.
        metrics: validation metrics to store beside the model.
    """

    def __init__(
        self, extractor: FeatureExtractor, probe: LinearProbe, metrics: dict[str, Any] | None = None
    ) -> None:
        self.extractor = extractor
        self.probe = probe
        self.metrics = metrics or {}

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.probe.classes_]

    def describe(self) -> dict[str, Any]:
        """The model.json content."""
        import sklearn

        bb = self.extractor._backbone()
        return {
            "format": "transferlab-model",
            "format_version": FORMAT_VERSION,
            "transferlab_version": _version(),
            "sklearn_version": sklearn.__version__,
            "kind": "linear_probe",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": {
                "name": bb.name,
                "timm_name": bb.spec.timm_name,
                "weights_source": bb.weights_source,
                "weights_sha256": bb.weights_sha256,
            },
            "layer": self.extractor.layer,
            "pool": self.extractor.pool,
            "preprocessing": bb.preprocessing(),
            "classes": self.classes,
            "probe": {"file": PROBE_FILE, "params": self.probe.get_params()},
        }

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model directory atomically (a temp dir renamed into place).

        Raises:
            ModelFormatError: `directory` exists and ``overwrite`` is False.
        """
        import joblib

        target = Path(directory)
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise ModelFormatError(
                f"{target} already exists and is not empty; pass overwrite=True (--overwrite)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            (tmp / MODEL_JSON).write_text(
                json.dumps(self.describe(), indent=2, default=_json_default)
            )
            joblib.dump(self.probe, tmp / PROBE_FILE)
            (tmp / "metrics.json").write_text(
                json.dumps(self.metrics, indent=2, default=_json_default)
            )
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def predict_paths(
        self, paths: Sequence[str | os.PathLike[str]], *, top_k: int = 1
    ) -> list[Prediction]:
        """Predict each image; a broken image gets a `Prediction` with its `error`, not an exception."""
        result = self.extractor.extract(paths, on_error="skip")
        out: dict[int, Prediction] = {}
        if len(result.paths):
            proba = self.probe.predict_proba(result.features[self.extractor.layer])
            classes = self.classes
            k = max(1, min(top_k, len(classes)))
            for row, i in enumerate(result.index):
                order = np.argsort(-proba[row])[:k]
                top = [(classes[j], float(proba[row, j])) for j in order]
                out[int(i)] = Prediction(result.paths[row], top[0][0], top[0][1], top)
        failed = iter(result.failures)
        preds = []
        for i, p in enumerate(paths):
            if i in out:
                preds.append(out[i])
            else:
                err = next(failed)
                preds.append(Prediction(os.fspath(p), None, None, [], err.reason))
        return preds


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_model(
    directory: str | os.PathLike[str],
    *,
    device: str = "auto",
    cache: bool | str | os.PathLike[str] = True,
    progress: bool = True,
) -> TransferModel:
    """Load a model directory written by `TransferModel.save` (e.g. by `transferlab fit`).

    Raises:
        ModelFormatError: not a model directory, damaged, or written by an incompatible version.
        BackboneMismatchError: the backbone weights here differ from the ones it was trained on.
    """
    import joblib

    root = Path(directory)
    meta_path = root / MODEL_JSON
    if not root.is_dir():
        raise ModelFormatError(f"model directory not found: {root}")
    if not meta_path.is_file():
        raise ModelFormatError(
            f"{root} is not a transferlab model directory: {MODEL_JSON} is missing"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{meta_path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "transferlab-model":
        raise ModelFormatError(f"{meta_path} does not describe a transferlab model")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{root} uses model format {meta.get('format_version')!r}; this transferlab "
            f"({_version()}) reads format {FORMAT_VERSION}. Re-fit the model with this version."
        )
    saved_version = str(meta.get("transferlab_version", "?"))
    if _minor(saved_version) != _minor(_version()):
        raise ModelFormatError(
            f"{root} was saved by transferlab {saved_version}; this is transferlab {_version()}. "
            f"Models load only within the same minor version: re-fit it, or install "
            f"transferlab=={saved_version}."
        )
    for key in ("backbone", "layer", "pool", "classes"):
        if key not in meta:
            raise ModelFormatError(f"{meta_path} lacks the field {key!r}")
    bb_meta = meta["backbone"]
    source = str(bb_meta.get("weights_source", "default"))
    weights = source.split(":", 1)[1] if source.startswith("file:") else source
    if weights == "package":
        weights = "default"
    extractor = FeatureExtractor(
        bb_meta["name"],
        layer=meta["layer"],
        pool=meta["pool"],
        weights=weights,
        device=device,
        cache=cache,
        progress=progress,
    )
    try:
        extractor.fit()
    except WeightsNotFoundError as exc:
        raise BackboneMismatchError(
            f"{root} needs backbone {bb_meta['name']!r} with weights from {source}, which cannot be "
            f"loaded here: {exc}"
        ) from exc
    here = extractor.backbone_.weights_sha256
    if here != bb_meta.get("weights_sha256"):
        raise BackboneMismatchError(
            f"{root} was trained on {bb_meta['name']!r} weights {str(bb_meta.get('weights_sha256'))[:12]}…, "
            f"but the weights loaded here ({extractor.backbone_.weights_source}) are {here[:12]}…. "
            "Features would differ and predictions be wrong: re-fit the model on these weights."
        )
    probe_path = root / meta.get("probe", {}).get("file", PROBE_FILE)
    if not probe_path.is_file():
        raise ModelFormatError(f"{root}: probe file {probe_path.name} is missing")
    try:
        probe = joblib.load(probe_path)
    except Exception as exc:  # unpickling can fail in many ways; all mean "damaged file"
        raise ModelFormatError(
            f"{probe_path} cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(probe, LinearProbe) or [str(c) for c in probe.classes_] != list(
        meta["classes"]
    ):
        raise ModelFormatError(f"{probe_path} does not match {MODEL_JSON} (classes differ)")
    metrics_path = root / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return TransferModel(extractor, probe, metrics)
