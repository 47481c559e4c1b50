"""The training loss: cross-entropy, or BCE for multi-label, class-weighted when asked."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["make_loss"]


class _SmoothedBCE(nn.Module):
    """BCE-with-logits with targets pulled towards 0.5 by `smoothing` (multi-label smoothing)."""

    def __init__(self, smoothing: float, pos_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target * (1 - self.smoothing) + 0.5 * self.smoothing)


def make_loss(
    y_train: np.ndarray,
    n_classes: int,
    *,
    multi_label: bool,
    class_balance: str | None,
    label_smoothing: float,
    device: torch.device,
) -> nn.Module:
    """Cross-entropy (single-label) or smoothed BCE (multi-label; `y_train` a 0/1 matrix);
    ``class_balance="weights"`` weighs classes by inverse frequency (positives by neg/pos)."""
    if multi_label:
        pos_weight = None
        if class_balance == "weights":
            pos = y_train.sum(0).clip(min=1)
            pos_weight = torch.as_tensor(
                (len(y_train) - pos) / pos, dtype=torch.float32, device=device
            )
        return _SmoothedBCE(label_smoothing, pos_weight)
    class_w = None
    if class_balance == "weights":
        counts = np.bincount(y_train, minlength=n_classes).astype(float)
        class_w = torch.as_tensor(
            len(y_train) / (len(counts) * counts), dtype=torch.float32, device=device
        )
    return nn.CrossEntropyLoss(weight=class_w, label_smoothing=label_smoothing)
