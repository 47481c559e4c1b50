"""AdaBN: BatchNorm running statistics re-estimated on new data, weights untouched."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["reestimate_bn"]


@torch.no_grad()
def reestimate_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> int:
    """AdaBN in place: reset every BatchNorm layer's running statistics and re-estimate them as
    the cumulative average over `batches` (rest of the network in eval mode; no weight changes).

    Returns the number of images used; batches of one image are skipped (no variance).
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not layers:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in layers
    ]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
        m.train()
    n = 0
    try:
        for x in batches:
            if x.shape[0] < 2:
                continue
            model.forward_features(x.to(device).contiguous(memory_format=torch.channels_last))
            n += x.shape[0]
            if progress is not None:
                progress(x.shape[0])
    finally:
        for m, mom, (mean, var, nbt) in zip(layers, momenta, saved, strict=True):
            m.momentum = mom
            if n == 0:  # nothing seen (or interrupted before any batch): keep the old statistics
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(nbt)
        model.train(was_training)
    return n
