"""What both kinds of saved model share: the directory format, `Prediction`s for image paths,
calibrated probabilities, and writing a model directory atomically.

Layout (see DESIGN.md)::

    MODEL_DIR/
      model.json     backbone name + weights digest, layer, pooling, preprocessing, classes, versions
      probe.zip      the fitted LinearProbe (a probe model; JSON + arrays, never a pickle), or
      weights.safetensors   every weight of a fine-tuned network
      metrics.json   the validation metrics at save time
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.exceptions import ModelFormatError

__all__ = [
    "FORMAT_VERSION",
    "MAX_TRAIN_INDEX",
    "Prediction",
    "Predictor",
    "atomic_dir",
    "file_sha256",
    "library_version",
    "predictions_for",
    "read_probe",
    "write_probe",
]

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
METRICS_JSON = "metrics.json"
PROBE_FILE = "probe.zip"
#: what older versions wrote: a pickle, which runs code when loaded (issue 21)
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
WEIGHTS_FILE = "weights.safetensors"
INT8_FILE = "features-int8.onnx"  # a probe on int8 features carries the export they came from
BACKBONE_FILE = "backbone.safetensors"  # a probe's backbone whose weights are its own (AdaBN)
TRAIN_INDEX_FILE = "train_index.npz"
#: Training sets larger than this are not indexed in the model directory (size on disk).
MAX_TRAIN_INDEX = 20_000


def write_probe(probe: Any, path: Path) -> None:
    """Save a fitted probe without pickle (`_probe_io`: JSON and arrays)."""
    from transferlab.models._probe_io import dump_probe

    dump_probe(probe, path)


def read_probe(path: Path, *, allow_pickle: bool = False) -> Any:
    """Load a probe file without running code from it (`_probe_io`: objects rebuilt from an
    allowlist of the classes a probe is made of). A pickle (``probe.joblib`` from an older
    transferlab) is refused unless `allow_pickle`, which is for models you made yourself.

    Raises:
        ModelFormatError: a pickle (without `allow_pickle`), a class not allowed, or damage.
    """
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelFormatError(
                f"{path} is a pickle, and loading a pickle can run any code it holds: refused. "
                "This transferlab saves models without pickle. If you made this model "
                "yourself, convert it: transferlab.models.load_model(DIR, allow_pickle=True)"
                ".save(NEW_DIR)"
            )
        import joblib

        try:
            return joblib.load(path)
        except Exception as exc:  # unpickling fails in many ways: all mean "damaged"
            raise ModelFormatError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc
    from transferlab.models._probe_io import load_probe

    return load_probe(path)


def library_version() -> str:
    """This transferlab's version (written into model.json, checked on load)."""
    from transferlab._version import __version__

    return __version__


@dataclass
class Prediction:
    """One image's prediction: the top classes with probabilities, or the error that stopped it."""

    path: str
    label: str | None
    probability: float | None
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    labels: list[str] | None = None
    uncertain: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "probability": self.probability,
            "top": [{"label": c, "probability": p} for c, p in self.top],
            **({"labels": self.labels} if self.labels is not None else {}),
            **({"uncertain": True} if self.uncertain else {}),
            **({"error": self.error} if self.error else {}),
        }


class Predictor:
    """What both model kinds share: calibrated probabilities and `Prediction`s for image paths.

    Subclasses set `classes`, `multi_label`, `temperature` and implement `_raw_proba_paths`.
    """

    classes: list[str]
    multi_label: bool
    temperature: float = 1.0

    def _raw_proba_paths(
        self, paths: Sequence[str | os.PathLike[str]]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        raise NotImplementedError

    def _label_thresholds(self) -> np.ndarray | None:
        return None

    def predict_proba_paths(
        self, paths: Sequence[str | os.PathLike[str]], *, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        """Probabilities for the images that decode (temperature-scaled when `calibrated`), their
        positions in `paths`, and path -> reason for those that do not."""
        proba, index, errors = self._raw_proba_paths(paths)
        if calibrated and not self.multi_label and self.temperature != 1.0 and len(proba):
            from transferlab.evaluate import TemperatureScaler

            proba = TemperatureScaler(self.temperature).transform(proba)
        return proba, index, errors

    def predict_paths(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        top_k: int = 1,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Predict each image; a broken image gets a `Prediction` with its `error`, not an exception.

        With `threshold`, a single-label prediction whose top probability is below it is marked
        ``uncertain`` and its label set to ``"uncertain"`` instead of a guess.
        """
        proba, index, errors = self.predict_proba_paths(paths)
        return predictions_for(
            paths, index, proba, self.classes, errors, top_k, self._label_thresholds(), threshold
        )


def predictions_for(
    paths: Sequence[str | os.PathLike[str]],
    index: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    errors: dict[str, str],
    top_k: int,
    thresholds: np.ndarray | None = None,
    uncertain_below: float | None = None,
) -> list[Prediction]:
    """One `Prediction` per input path: top-k classes for rows of `proba`, errors for the rest.

    With per-label `thresholds` (multi-label), `label` lists every label at or over its threshold
    (``;``-joined, possibly empty) and `labels` holds them.
    """
    by_input = {int(i): row for row, i in enumerate(index)}
    k = max(1, min(top_k, len(classes)))
    preds = []
    for i, p in enumerate(paths):
        path = os.fspath(p)
        row = by_input.get(i)
        if row is None:
            preds.append(Prediction(path, None, None, [], errors.get(path, "could not be read")))
            continue
        order = np.argsort(-proba[row])[:k]
        top = [(classes[j], float(proba[row, j])) for j in order]
        if thresholds is not None:
            on = [classes[j] for j in np.argsort(-proba[row]) if proba[row, j] >= thresholds[j]]
            preds.append(Prediction(path, ";".join(on), None, top, labels=on))
        elif uncertain_below is not None and top[0][1] < uncertain_below:
            preds.append(Prediction(path, "uncertain", top[0][1], top, uncertain=True))
        else:
            preds.append(Prediction(path, top[0][0], top[0][1], top))
    return preds


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def atomic_dir(target: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)` then move the folder into place, so a crash never leaves half a model."""
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ModelFormatError(
            f"{target} already exists and is not empty; pass overwrite=True (--overwrite)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
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
