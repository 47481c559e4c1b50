"""`FinetunedModel`: a fine-tuned network (backbone + new head), saved as a model directory."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.json import write_json
from transferlab.models._base import (
    FORMAT_VERSION,
    METRICS_JSON,
    MODEL_JSON,
    WEIGHTS_FILE,
    Predictor,
    atomic_dir,
    file_sha256,
    library_version,
)

__all__ = ["FinetunedModel"]


class FinetunedModel(Predictor):
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
            "transferlab_version": library_version(),
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
            digest = file_sha256(tmp / WEIGHTS_FILE)
            write_json(tmp / MODEL_JSON, self.describe(digest))
            write_json(tmp / METRICS_JSON, self.metrics)

        return atomic_dir(Path(directory), overwrite, write)

    def _raw_proba_paths(
        self, paths: Sequence[str | os.PathLike[str]]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        import torch

        from transferlab.data import ImageFileDataset, collate_skipping_failures, eval_transform
        from transferlab.finetune import predict_batch

        str_paths = [os.fspath(p) for p in paths]
        ds = ImageFileDataset(str_paths, eval_transform(self.backbone, self.image_size), None)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, collate_fn=collate_skipping_failures
        )
        model = self.backbone.model.eval()
        rows, index, errors = [], [], {}
        for idx, x, bad in loader:
            for j, reason in bad:
                errors[str_paths[j]] = reason
            if x is None:
                continue
            rows.append(
                predict_batch(
                    model,
                    x,
                    device=self.backbone.device,
                    multi_label=self.multi_label,
                    tta=self.tta,
                )
            )
            index.extend(idx)
        proba = np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))
        return proba, np.asarray(index, dtype=np.int64), errors

    def _label_thresholds(self) -> np.ndarray | None:
        return self.thresholds
