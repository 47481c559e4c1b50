"""The one prediction step of a fine-tuned network, shared by validation in training and by a
saved `FinetunedModel`: softmax (sigmoid for multi-label), averaged with the mirrored image
under test-time augmentation; and the validation loss and score computed from it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.distributed import ddp as _ddp

__all__ = ["loss_and_score", "predict_batch", "predict_loader"]


@torch.inference_mode()
def predict_batch(
    model: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device | str,
    multi_label: bool = False,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities of one batch of normalised images (`model` in eval mode)."""
    act = torch.sigmoid if multi_label else (lambda z: z.softmax(-1))
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    p = act(model(x).float())
    if tta:
        p = (p + act(model(torch.flip(x, dims=[3])).float())) / 2
    return p.cpu().numpy()


@torch.inference_mode()
def predict_loader(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device | str,
    multi_label: bool = False,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets for a loader of ``(images, targets)`` batches; under DDP, every
    rank's shard gathered in order."""
    model.eval()
    probs, ys = [], []
    for x, y in loader:
        probs.append(predict_batch(model, x, device=device, multi_label=multi_label, tta=tta))
        ys.append(y.numpy())
    if isinstance(loader.sampler, _ddp.ShardSampler):  # DDP: this rank's share, then all
        return _ddp.gather_batches(probs), _ddp.gather_batches(ys)
    return np.concatenate(probs), np.concatenate(ys)


def loss_and_score(
    proba: np.ndarray, y: np.ndarray, classes: list[str], *, multi_label: bool
) -> tuple[float, float]:
    """Validation loss (NLL, or BCE for multi-label) and score (accuracy, or mAP)."""
    if multi_label:
        from transferlab.evaluate import evaluate_multilabel

        p = np.clip(proba, 1e-7, 1 - 1e-7)
        bce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        return bce, evaluate_multilabel(y.astype(int), proba, classes).mAP
    nll = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))
    return nll, float(np.mean(proba.argmax(1) == y))
