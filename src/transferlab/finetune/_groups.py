"""Layer groups (stem, stages, head), freezing, BatchNorm mode and discriminative learning rates."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["discriminative_optimizer", "freeze", "layer_groups", "set_train_mode"]

Groups = list[tuple[str, list[str]]]


def layer_groups(model: nn.Module) -> Groups:
    """Parameter names per layer group, shallow to deep, with the classifier last.

    Uses the model's timm ``group_matcher(coarse=True)`` (stem, each stage, head) when it has one,
    else one group per top-level child.
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = (
        {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    )
    named = dict(model.named_parameters())
    head_names = [n for n, p in named.items() if id(p) in head_ids]
    groups: Groups = []
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=True))
        for gid in sorted(grouped):
            names = [n for n in grouped[gid] if n not in head_names]
            if names:
                groups.append((f"group{len(groups)}", names))
    else:
        seen: set[str] = set(head_names)
        for child, _ in model.named_children():
            names = [n for n in named if n.startswith(child + ".") and n not in seen]
            if names:
                groups.append((child, names))
                seen.update(names)
    if groups:
        groups[0] = ("stem", groups[0][1])
    if head_names:
        groups.append(("classifier", head_names))
    return groups


def freeze(model: nn.Module, groups: Groups, n: int) -> int:
    """Train only groups ``n`` and deeper (negative counts from the end, like fastai's
    ``freeze_to``); returns the index of the first trained group."""
    named = dict(model.named_parameters())
    n = n % len(groups) if n < 0 else min(n, len(groups))
    for i, (_, names) in enumerate(groups):
        for name in names:
            named[name].requires_grad_(i >= n)
    return n


def set_train_mode(model: nn.Module, bn_policy: str) -> None:
    """Train mode, except BatchNorm in frozen groups (always) and everywhere under 'freeze'."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            frozen = bool(params) and not any(p.requires_grad for p in params)
            if bn_policy == "freeze" or frozen:
                module.eval()


def discriminative_optimizer(
    model: nn.Module,
    groups: Groups,
    first: int,
    lr: float,
    lr_mult: float,
    weight_decay: float,
) -> tuple[torch.optim.Optimizer, list[float]]:
    """AdamW with one parameter group per (trained layer group, decay / no decay); per-group peak
    LRs spaced geometrically from lr / lr_mult (stem) to lr (classifier). Weight decay skips 1-D
    parameters (biases, norms)."""
    named = dict(model.named_parameters())
    active = [names for i, (_, names) in enumerate(groups) if i >= first]
    n = len(active)
    param_groups, max_lrs = [], []
    for k, names in enumerate(active):
        scale = lr_mult ** (-(n - 1 - k) / max(n - 1, 1)) if n > 1 else 1.0
        decay = [named[m] for m in names if named[m].ndim > 1]
        no_decay = [named[m] for m in names if named[m].ndim <= 1]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append({"params": params, "weight_decay": wd})
                max_lrs.append(lr * scale)
    return torch.optim.AdamW(param_groups, lr=lr), max_lrs
