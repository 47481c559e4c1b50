"""Activation-statistics shift: the BatchNorm-shift measure for networks without BatchNorm.

A BatchNorm network stores ImageNet's statistics at every layer, so the target's departure
from them can be read layer by layer (`bn_shift`). Transformers and ConvNeXt normalise each
image on its own (LayerNorm) and store nothing. What stands in: the inputs of every norm layer
(LayerNorm, GroupNorm, RMSNorm, BatchNorm alike) on the target images against the same inputs
on reference photos, with the same three per-channel measures. The reference is split in two
halves: the target is measured against half A, and half B against half A is the floor, the
distance two samples of photos keep from each other, which the target's shift is compared to
(`locate_shift`'s ratio rule). On lite0, whose BatchNorm statistics give the other measure, the
two locate the same shift (benchmarks/RESULTS.md, issue 20).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones import Backbone
from transferlab.diagnose._bn import BNShift, input_moments, tap_of_module
from transferlab.exceptions import InvalidParameterError

__all__ = ["activation_shift", "norm_layers"]


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, module, channel dimension of its input) of every normalisation layer, in order.

    LayerNorm and RMSNorm normalise the last dimension (ViT tokens, ConvNeXt's channels-last
    blocks); timm's ``LayerNorm2d``, GroupNorm and BatchNorm take N, C, H, W."""
    out = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or kind.endswith("2d"):
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                out.append((name, m, 1))
        elif isinstance(m, nn.LayerNorm) or kind in ("RmsNorm", "RMSNorm", "SimpleNorm"):
            out.append((name, m, -1))
    return out


def _against(
    mu: dict[str, np.ndarray],
    var: dict[str, np.ndarray],
    ref_mu: dict[str, np.ndarray],
    ref_var: dict[str, np.ndarray],
    names: list[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    eps = 1e-5
    ms, lv, w2 = [], [], []
    for n in names:
        rsd = np.sqrt(ref_var[n] + eps)
        sd = np.sqrt(var[n] + eps)
        ms.append(float(np.mean(np.abs(mu[n] - ref_mu[n]) / rsd)))
        lv.append(float(np.mean(np.abs(np.log((var[n] + eps) / (ref_var[n] + eps))))))
        w2.append(float(np.mean(np.sqrt(((mu[n] - ref_mu[n]) ** 2 + (sd - rsd) ** 2) / rsd**2))))
    return np.asarray(ms), np.asarray(lv), np.asarray(w2)


def activation_shift(
    backbone: Backbone,
    target: Iterable[torch.Tensor],
    reference: list[torch.Tensor],
) -> tuple[BNShift, BNShift]:
    """Each norm layer's input statistics on `target` against reference photos' (half A), and
    reference half B against half A (the floor), as two `BNShift` with ``measure="activations"``
    that `locate_shift` and `advise` read as they read BatchNorm's.

    Args:
        backbone: any backbone with normalisation layers.
        target: preprocessed batches of the user's images.
        reference: preprocessed batches of reference photos (at least 2 images), split in two
            halves by alternating images.

    Raises:
        InvalidParameterError: the network has no norm layer, or too few images.
    """
    layers = norm_layers(backbone.model)
    if not layers:
        raise InvalidParameterError(
            f"backbone {backbone.name!r} has no normalisation layer whose inputs could be compared"
        )
    ref = torch.cat(list(reference)) if reference else torch.empty(0)
    if ref.shape[0] < 4:
        raise InvalidParameterError("the activation shift needs at least 4 reference images")
    half_a, half_b = ref[0::2], ref[1::2]
    mu_a, var_a, n_a = input_moments(backbone, half_a.split(32), layers)
    mu_b, var_b, _ = input_moments(backbone, half_b.split(32), layers)
    mu_t, var_t, n_t = input_moments(backbone, target, layers)
    if n_t == 0:
        raise InvalidParameterError("no image could be read to measure activation statistics")
    # the norms forward_features runs (a head's own norm, as ConvNeXt's, is not reached)
    names = [n for n, _, _ in layers if n in mu_t and n in mu_a and n in mu_b]
    taps = [tap_of_module(backbone, n) for n in names]

    def shift(mu: Any, var: Any, n: int) -> BNShift:
        ms, lv, w2 = _against(mu, var, mu_a, var_a, names)
        return BNShift(names, taps, ms, lv, w2, n, measure="activations")

    return shift(mu_t, var_t, n_t), shift(mu_b, var_b, n_a)
