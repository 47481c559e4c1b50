"""`TransferModel`: a feature extractor and a fitted probe, saved as a model directory."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.json import write_json
from transferlab.exceptions import ModelFormatError
from transferlab.features import FeatureExtractor
from transferlab.models._base import (
    BACKBONE_FILE,
    FORMAT_VERSION,
    INT8_FILE,
    METRICS_JSON,
    MODEL_JSON,
    PROBE_FILE,
    TRAIN_INDEX_FILE,
    Predictor,
    atomic_dir,
    library_version,
    write_probe,
)
from transferlab.probe import DomainAdaptedProbe, LinearProbe, MultiLabelProbe

__all__ = ["TransferModel"]


class TransferModel(Predictor):
    """A feature extractor + a fitted probe: images in, class probabilities out.

    Args:
        extractor: the `FeatureExtractor` (backbone, layer, pool) the probe was trained on.
        probe: a fitted `LinearProbe` (or `DomainAdaptedProbe`, `MultiLabelProbe`).
        metrics: validation metrics to store beside the model.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        probe: LinearProbe | MultiLabelProbe | DomainAdaptedProbe,
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

        bb = self.extractor._card()  # no model load: the card knows what model.json says
        return {
            "format": "transferlab-model",
            "format_version": FORMAT_VERSION,
            "transferlab_version": library_version(),
            "sklearn_version": sklearn.__version__,
            "kind": "linear_probe",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": {
                "name": bb.name,
                "timm_name": bb.timm_name,
                # weights adapted in this run (AdaBN) travel inside the model folder
                "weights_source": f"file:{BACKBONE_FILE}"
                if bb.weights_source.startswith("adabn")
                else bb.weights_source,
                "weights_sha256": bb.weights_sha256,
            },
            "layer": self.extractor.layer,
            "pool": self.extractor.pool,
            # int8: the probe was trained on vectors of the int8 export saved beside it
            "precision": self.extractor._precision(),
            **({"int8_model": INT8_FILE} if self.extractor._precision() == "int8" else {}),
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

        def write(tmp: Path) -> None:
            write_json(tmp / MODEL_JSON, self.describe())
            write_probe(self.probe, tmp / PROBE_FILE)
            if self.extractor._card().weights_source.startswith("adabn"):
                from safetensors.torch import save_file

                bb = self.extractor.backbone_
                state = {k: v.detach().cpu().contiguous() for k, v in bb.model.state_dict().items()}
                save_file(state, tmp / BACKBONE_FILE)
            if self.extractor._precision() == "int8":
                import shutil

                src = self.extractor.quantization_["quantization"]["int8_path"]
                shutil.copyfile(src, tmp / INT8_FILE)
                write_json(tmp / f"{INT8_FILE}.json", self.extractor.quantization_)
            write_json(tmp / METRICS_JSON, self.metrics)
            if self.train_index is not None:  # for nearest-neighbour explanations in evaluate
                np.savez_compressed(
                    tmp / TRAIN_INDEX_FILE,
                    X=np.asarray(self.train_index["X"], np.float16),
                    paths=np.asarray(self.train_index["paths"], dtype=str),
                    labels=np.asarray(self.train_index["labels"], dtype=str),
                )

        return atomic_dir(Path(directory), overwrite, write)

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
