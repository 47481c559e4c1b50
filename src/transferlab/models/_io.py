"""`load_model`: a model directory back into a `TransferModel` or `FinetunedModel`, refusing
one that would load wrongly.

Loading checks the format and library versions and that the backbone weights available now are
the ones the probe was trained on (by digest), so a probe never silently runs on other features.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.exceptions import BackboneMismatchError, ModelFormatError, WeightsNotFoundError
from transferlab.features import FeatureExtractor
from transferlab.models._base import (
    FORMAT_VERSION,
    INT8_FILE,
    METRICS_JSON,
    MODEL_JSON,
    PROBE_FILE,
    TRAIN_INDEX_FILE,
    WEIGHTS_FILE,
    file_sha256,
    library_version,
    read_probe,
)
from transferlab.models._finetuned import FinetunedModel
from transferlab.models._transfer import TransferModel
from transferlab.probe import DomainAdaptedProbe, LinearProbe, MultiLabelProbe

__all__ = ["load_model"]


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _read_metrics(root: Path) -> dict[str, Any]:
    path = root / METRICS_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def load_model(
    directory: str | os.PathLike[str],
    *,
    device: str = "auto",
    cache: bool | str | os.PathLike[str] = True,
    progress: bool = True,
    allow_pickle: bool = False,
) -> TransferModel | FinetunedModel:
    """Load a model directory written by `TransferModel.save` (e.g. by `transferlab fit`).

    Loading never runs code from the directory: the probe is rebuilt from an allowlist of its
    classes (`read_probe`). `allow_pickle` reads the ``probe.joblib`` of older versions,
    for models you made yourself (then ``.save`` them again to convert).

    Raises:
        ModelFormatError: not a model directory, damaged, or written by an incompatible version.
        BackboneMismatchError: the backbone weights here differ from the ones it was trained on.
    """
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
            f"({library_version()}) reads format {FORMAT_VERSION}. Re-fit the model with this version."
        )
    saved_version = str(meta.get("transferlab_version", "?"))
    if _minor(saved_version) != _minor(library_version()):
        raise ModelFormatError(
            f"{root} was saved by transferlab {saved_version}; this is transferlab {library_version()}. "
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
    int8 = {}
    if meta.get("precision") == "int8":  # the probe's vectors came from this very export
        path = root / str(meta.get("int8_model", INT8_FILE))
        if not path.is_file():
            raise ModelFormatError(f"{root}: its int8 export {path.name} is missing")
        int8 = {"precision": "int8", "int8_model": str(path)}
        device = "cpu"  # int8 runs in ONNX Runtime on CPU
    extractor = FeatureExtractor(
        bb_meta["name"],
        layer=meta["layer"],
        pool=meta["pool"],
        weights=weights,
        device=device,
        cache=cache,
        progress=progress,
        **int8,
    )
    try:
        extractor.fit()
    except WeightsNotFoundError as exc:
        raise BackboneMismatchError(
            f"{root} needs backbone {bb_meta['name']!r} with weights from {source}, which cannot be "
            f"loaded here: {exc}"
        ) from exc
    here = extractor._card().weights_sha256
    if here != bb_meta.get("weights_sha256"):
        raise BackboneMismatchError(
            f"{root} was trained on {bb_meta['name']!r} weights {str(bb_meta.get('weights_sha256'))[:12]}…, "
            f"but the weights loaded here ({extractor._card().weights_source}) are {here[:12]}…. "
            "Features would differ and predictions be wrong: re-fit the model on these weights."
        )
    probe_path = root / meta.get("probe", {}).get("file", PROBE_FILE)
    if not probe_path.is_file():
        raise ModelFormatError(f"{root}: probe file {probe_path.name} is missing")
    probe = read_probe(probe_path, allow_pickle=allow_pickle)
    if meta.get("multi_label"):
        if not isinstance(probe, MultiLabelProbe) or probe.n_labels_ != len(meta["classes"]):
            raise ModelFormatError(f"{probe_path} does not match {MODEL_JSON} (labels differ)")
        probe.thresholds_ = np.asarray(meta.get("thresholds", probe.thresholds_), dtype=float)
    elif not isinstance(probe, (LinearProbe, DomainAdaptedProbe)) or [
        str(c) for c in probe.classes_
    ] != list(meta["classes"]):
        raise ModelFormatError(f"{probe_path} does not match {MODEL_JSON} (classes differ)")
    metrics = _read_metrics(root)
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
    if file_sha256(wpath) != meta["weights"].get("sha256"):
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
    metrics = _read_metrics(root)
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
