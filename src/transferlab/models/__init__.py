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

from transferlab._internal.json import json_default as _json_default
from transferlab.exceptions import BackboneMismatchError, ModelFormatError, WeightsNotFoundError
from transferlab.features import FeatureExtractor
from transferlab.probe import LinearProbe, MultiLabelProbe

__all__ = ["FORMAT_VERSION", "FinetunedModel", "Prediction", "TransferModel", "load_model"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
PROBE_FILE = "probe.joblib"
WEIGHTS_FILE = "weights.safetensors"
BACKBONE_FILE = "backbone.safetensors"  # a probe's backbone whose weights are its own (AdaBN)
TRAIN_INDEX_FILE = "train_index.npz"
#: Training sets larger than this are not indexed in the model directory (size on disk).
MAX_TRAIN_INDEX = 20_000


def _version() -> str:
    from transferlab._version import __version__

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


class _Predictor:
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
        return _predictions(
            paths, index, proba, self.classes, errors, top_k, self._label_thresholds(), threshold
        )


class TransferModel(_Predictor):
    """A feature extractor + a fitted probe: images in, class probabilities out.

    Args:
        extractor: the `FeatureExtractor` (backbone, layer, pool) the probe was trained on.
        probe: a fitted `LinearProbe`.
        metrics: validation metrics to store beside the model.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        probe: LinearProbe | MultiLabelProbe,
        metrics: dict[str, Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.extractor = extractor
        self.probe = probe
        self.metrics = metrics or {}
        self.multi_label = isinstance(probe, MultiLabelProbe)
        self.train_index: dict[str, Any] | None = None
        if self.multi_label and classes is None:
            raise ModelFormatError("a multi-label probe needs its label names (classes=...)")
        self._classes = [str(c) for c in (classes if classes is not None else probe.classes_)]

    @property
    def classes(self) -> list[str]:
        return self._classes

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
                # weights adapted in this run (AdaBN) travel inside the model folder
                "weights_source": f"file:{BACKBONE_FILE}"
                if bb.weights_source.startswith("adabn")
                else bb.weights_source,
                "weights_sha256": bb.weights_sha256,
            },
            "layer": self.extractor.layer,
            "pool": self.extractor.pool,
            "preprocessing": bb.preprocessing(),
            "classes": self.classes,
            "multi_label": self.multi_label,
            **({"thresholds": self.probe.thresholds_.tolist()} if self.multi_label else {}),
            "calibration": {"temperature": self.temperature},
            "probe": {"file": PROBE_FILE, "params": self.probe.get_params()},
        }

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the model directory atomically (a temp dir renamed into place).

        Raises:
            ModelFormatError: `directory` exists and ``overwrite`` is False.
        """
        import joblib

        def write(tmp: Path) -> None:
            (tmp / MODEL_JSON).write_text(
                json.dumps(self.describe(), indent=2, default=_json_default)
            )
            joblib.dump(self.probe, tmp / PROBE_FILE)
            bb = self.extractor._backbone()
            if bb.weights_source.startswith("adabn"):
                from safetensors.torch import save_file

                state = {k: v.detach().cpu().contiguous() for k, v in bb.model.state_dict().items()}
                save_file(state, tmp / BACKBONE_FILE)
            (tmp / "metrics.json").write_text(
                json.dumps(self.metrics, indent=2, default=_json_default)
            )
            if self.train_index is not None:  # for nearest-neighbour explanations in evaluate
                np.savez_compressed(
                    tmp / TRAIN_INDEX_FILE,
                    X=np.asarray(self.train_index["X"], np.float16),
                    paths=np.asarray(self.train_index["paths"], dtype=str),
                    labels=np.asarray(self.train_index["labels"], dtype=str),
                )

        return _atomic_dir(Path(directory), overwrite, write)

    def _raw_proba_paths(
        self, paths: Sequence[str | os.PathLike[str]]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        result = self.extractor.extract(paths, on_error="skip")
        proba = (
            self.probe.predict_proba(result.features[self.extractor.layer])
            if len(result.paths)
            else np.zeros((0, len(self.classes)))
        )
        return proba, result.index, {e.path: e.reason for e in result.failures}

    def _label_thresholds(self) -> np.ndarray | None:
        return self.probe.thresholds_ if self.multi_label else None


def _predictions(
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


class FinetunedModel(_Predictor):
    """A fine-tuned network (backbone + new head): images in, class probabilities out.

    Args:
        backbone: the `Backbone` carrying the fine-tuned weights (its model's head has one output
            per class).
        classes: class names in output order.
        image_size: input size used in training and evaluation.
        tta: average with the mirrored image at prediction.
        base: facts about the pretrained start point (name, weights digest) for model.json.
        metrics: validation metrics to store beside the model.
    """

    def __init__(
        self,
        backbone: Any,
        classes: Sequence[str],
        image_size: int,
        *,
        tta: bool = False,
        base: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        batch_size: int = 32,
        progress: bool = True,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.multi_label = thresholds is not None
        self.thresholds = np.asarray(thresholds, dtype=float) if thresholds is not None else None
        self.backbone = backbone
        self.classes = [str(c) for c in classes]
        self.image_size = int(image_size)
        self.tta = tta
        self.base = base or {}
        self.metrics = metrics or {}
        self.batch_size = batch_size
        self.progress = progress

    @classmethod
    def from_tuner(cls, tuner: Any, *, progress: bool = True) -> FinetunedModel:
        """The model a fitted `FineTuner` holds: its network, classes, input size and TTA setting,
        the pretrained weights it started from, and (multi-label) thresholds at 0.5 to be tuned
        on validation. One construction for the CLI pipeline and the service."""
        bb = tuner.backbone_
        return cls(
            bb,
            tuner.classes_,
            tuner.size_,
            tta=tuner.config.tta,
            progress=progress,
            base={"weights_sha256": bb.weights_sha256, "weights_source": bb.weights_source},
            thresholds=np.full(len(tuner.classes_), 0.5) if tuner.multi_label_ else None,
        )

    def describe(self, weights_sha256: str) -> dict[str, Any]:
        bb = self.backbone
        return {
            "format": "transferlab-model",
            "format_version": FORMAT_VERSION,
            "transferlab_version": _version(),
            "kind": "finetuned",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": {
                "name": bb.name,
                "timm_name": bb.spec.timm_name,
                "pretrained_weights_sha256": self.base.get("weights_sha256"),
                "pretrained_weights_source": self.base.get("weights_source"),
            },
            "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256},
            "image_size": self.image_size,
            "preprocessing": {
                **bb.preprocessing(),
                "input_size": [3, self.image_size, self.image_size],
            },
            "tta": self.tta,
            "classes": self.classes,
            "multi_label": self.multi_label,
            **({"thresholds": self.thresholds.tolist()} if self.thresholds is not None else {}),
            "calibration": {"temperature": self.temperature},
        }

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write model.json, weights.safetensors and metrics.json atomically."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            state = {
                k: v.detach().cpu().contiguous()
                for k, v in self.backbone.model.state_dict().items()
            }
            save_file(state, tmp / WEIGHTS_FILE)
            digest = _file_sha256(tmp / WEIGHTS_FILE)
            (tmp / MODEL_JSON).write_text(
                json.dumps(self.describe(digest), indent=2, default=_json_default)
            )
            (tmp / "metrics.json").write_text(
                json.dumps(self.metrics, indent=2, default=_json_default)
            )

        return _atomic_dir(Path(directory), overwrite, write)

    def _raw_proba_paths(
        self, paths: Sequence[str | os.PathLike[str]]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        import torch

        from transferlab.features import ImageFileDataset, collate_skipping_failures
        from transferlab.finetune import eval_transform

        str_paths = [os.fspath(p) for p in paths]
        ds = ImageFileDataset(str_paths, eval_transform(self.backbone, self.image_size), None)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, collate_fn=collate_skipping_failures
        )
        model = self.backbone.model.eval()
        act = torch.sigmoid if self.multi_label else (lambda z: z.softmax(-1))
        rows, index, errors = [], [], {}
        with torch.inference_mode():
            for idx, x, bad in loader:
                for j, reason in bad:
                    errors[str_paths[j]] = reason
                if x is None:
                    continue
                x = x.to(self.backbone.device).contiguous(memory_format=torch.channels_last)
                p = act(model(x).float())
                if self.tta:
                    p = (p + act(model(torch.flip(x, dims=[3])).float())) / 2
                rows.append(p.cpu().numpy())
                index.extend(idx)
        proba = np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))
        return proba, np.asarray(index, dtype=np.int64), errors

    def _label_thresholds(self) -> np.ndarray | None:
        return self.thresholds


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _atomic_dir(target: Path, overwrite: bool, write: Any) -> Path:
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



def load_model(
    directory: str | os.PathLike[str],
    *,
    device: str = "auto",
    cache: bool | str | os.PathLike[str] = True,
    progress: bool = True,
) -> TransferModel | FinetunedModel:
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
    if meta.get("kind") == "finetuned":
        return _load_finetuned(root, meta, device=device, progress=progress)
    for key in ("backbone", "layer", "pool", "classes"):
        if key not in meta:
            raise ModelFormatError(f"{meta_path} lacks the field {key!r}")
    bb_meta = meta["backbone"]
    source = str(bb_meta.get("weights_source", "default"))
    weights = source.split(":", 1)[1] if source.startswith("file:") else source
    if source.startswith("file:") and not os.path.isabs(weights):
        weights = str(root / weights)  # weights saved inside the model folder
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
    if meta.get("multi_label"):
        if not isinstance(probe, MultiLabelProbe) or probe.n_labels_ != len(meta["classes"]):
            raise ModelFormatError(f"{probe_path} does not match {MODEL_JSON} (labels differ)")
        probe.thresholds_ = np.asarray(meta.get("thresholds", probe.thresholds_), dtype=float)
    elif not isinstance(probe, LinearProbe) or [str(c) for c in probe.classes_] != list(
        meta["classes"]
    ):
        raise ModelFormatError(f"{probe_path} does not match {MODEL_JSON} (classes differ)")
    metrics_path = root / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    model = TransferModel(extractor, probe, metrics, classes=meta["classes"])
    model.temperature = float(meta.get("calibration", {}).get("temperature", 1.0))
    if (root / TRAIN_INDEX_FILE).is_file():
        with np.load(root / TRAIN_INDEX_FILE, allow_pickle=False) as z:
            model.train_index = {
                "X": z["X"].astype(np.float32),
                "paths": z["paths"].tolist(),
                "labels": z["labels"].tolist(),
            }
    return model


def _load_finetuned(
    root: Path, meta: dict[str, Any], *, device: str, progress: bool
) -> FinetunedModel:
    """A fine-tuned model is self-contained: the architecture from timm, every weight from the file."""
    from safetensors.torch import load_file

    from transferlab.backbones import load_backbone

    for key in ("backbone", "weights", "classes", "image_size"):
        if key not in meta:
            raise ModelFormatError(f"{root / MODEL_JSON} lacks the field {key!r}")
    wpath = root / meta["weights"].get("file", WEIGHTS_FILE)
    if not wpath.is_file():
        raise ModelFormatError(f"{root}: weights file {wpath.name} is missing")
    if _file_sha256(wpath) != meta["weights"].get("sha256"):
        raise BackboneMismatchError(
            f"{wpath} does not match the digest in {MODEL_JSON}: the file was changed or damaged"
        )
    bb = load_backbone(meta["backbone"]["name"], weights="random", device=device)
    bb.model.reset_classifier(len(meta["classes"]))
    try:
        state = load_file(str(wpath))
        bb.model.load_state_dict(state)
    except Exception as exc:  # a damaged or foreign file: say which
        raise ModelFormatError(
            f"{wpath} cannot be loaded into {meta['backbone']['name']}: {exc}"
        ) from exc
    import torch

    bb.model.to(bb.device, memory_format=torch.channels_last).eval()
    metrics_path = root / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    model = FinetunedModel(
        bb,
        meta["classes"],
        meta["image_size"],
        tta=bool(meta.get("tta")),
        base=meta["backbone"],
        metrics=metrics,
        progress=progress,
        thresholds=meta.get("thresholds") if meta.get("multi_label") else None,
    )
    model.temperature = float(meta.get("calibration", {}).get("temperature", 1.0))
    return model
