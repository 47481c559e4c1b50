"""The head starts from a linear probe (LP-FT, Kumar et al. 2022): fit on the pre-logits of the
un-augmented training images, copied into the classifier. timm's random init (weights up to
1/sqrt(k)) makes the first predictions wildly overconfident; the probe is also the baseline the
fine-tune is compared against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.distributed import ddp as _ddp

__all__ = ["embed", "init_head_from_probe"]


@torch.inference_mode()
def embed(model: nn.Module, loader: Any, device: torch.device) -> np.ndarray:
    """Pre-logits of every image of `loader` (all ranks' under DDP, in order)."""
    model.eval()
    out = []
    for x, _ in loader:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        out.append(
            model.forward_head(model.forward_features(x), pre_logits=True).float().cpu().numpy()
        )
    if isinstance(loader.sampler, _ddp.ShardSampler):  # DDP: this rank's share, then all
        return _ddp.gather_batches(out)
    return np.concatenate(out)


def _copy_head(model: nn.Module, coef: np.ndarray, bias: np.ndarray) -> None:
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(coef, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def init_head_from_probe(
    model: nn.Module,
    device: torch.device,
    classes: Sequence[str],
    *,
    multi_label: bool,
    train_loader: Any,
    y_train: np.ndarray,
    val_loader: Any,
    y_val: np.ndarray,
) -> float:
    """Fit a logistic-regression probe on pre-logits of the (un-augmented) train images and
    copy it into the head; returns the probe's validation score (accuracy, or mAP)."""
    from transferlab.probe import LinearProbe, MultiLabelProbe

    xtr = embed(model, train_loader, device)
    xva = embed(model, val_loader, device)
    if multi_label:
        from transferlab.evaluate import evaluate_multilabel

        ml = MultiLabelProbe(C=1.0, standardize=False).fit(xtr, y_train.astype(int))
        ests = ml.pipeline_[-1].estimators_
        raw = np.vstack([np.ravel(getattr(e, "coef_", np.zeros(xtr.shape[1]))) for e in ests])
        icpt = np.array([float(np.ravel(getattr(e, "intercept_", [0.0]))[0]) for e in ests])
        _copy_head(model, raw, icpt)
        return evaluate_multilabel(y_val.astype(int), ml.predict_proba(xva), list(classes)).mAP
    # On raw features, not standardised ones: folding a standardiser into the head divides by
    # each feature's spread, and near-constant features (many, on x-rays) then get weights in
    # the thousands; augmented images push those features off their constant and the first
    # losses reached 34 (pneumoniamnist). Raw-feature probes score as well here.
    names = np.asarray(classes)
    probe = LinearProbe(C=1.0, standardize=False).fit(xtr, names[y_train])
    clf = probe.pipeline_[-1]
    coef = clf.coef_
    bias = clf.intercept_
    if coef.shape[0] == 1:  # binary logistic regression: logits (-z/2, +z/2)
        coef = np.vstack([-coef / 2, coef / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    _copy_head(model, coef, bias)
    pred = probe.predict(xva)
    return float(np.mean(pred == names[y_val]))
