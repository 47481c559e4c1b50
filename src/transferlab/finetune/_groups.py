"""Layer groups (stem, stages, head), freezing, BatchNorm mode and discriminative learning rates."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "discriminative_optimizer",
    "freeze",
    "layer_decay_scales",
    "layer_groups",
    "set_train_mode",
]

Groups = list[tuple[str, list[str]]]


def layer_groups(model: nn.Module, *, coarse: bool = True) -> Groups:
    """Parameter names per layer group, shallow to deep, with the classifier last.

    Uses the model's timm ``group_matcher(coarse=True)`` (stem, each stage, head) when it has one,
    else one group per top-level child; ``coarse=False`` asks the matcher for its fine-grained
    layers (each block), the unit of layer-wise LR decay.
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

        grouped = group_parameters(model, model.group_matcher(coarse=coarse))
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


def layer_decay_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Per parameter name, its LR factor under layer-wise decay: ``decay ** (L - l)`` for a
    parameter of layer ``l`` of ``L``, the classifier 1, with timm's fine-grained layers
    (``group_matcher(coarse=False)``: a ViT block, a ConvNeXt block), as timm's
    ``param_groups_layer_decay`` counts them. Without a matcher, the top-level children."""
    fine = layer_groups(model, coarse=False)
    n = len(fine)
    scales = {}
    for k, (name, names) in enumerate(fine):
        scale = 1.0 if name == "classifier" else decay ** (n - 1 - k)
        scales.update(dict.fromkeys(names, scale))
    return scales


def discriminative_optimizer(
    model: nn.Module,
    groups: Groups,
    first: int,
    lr: float,
    lr_mult: float,
    weight_decay: float,
    layer_decay: float | None = None,
) -> tuple[torch.optim.Optimizer, list[float]]:
    """AdamW with one parameter group per (trained layer group, decay / no decay); per-group peak
    LRs spaced geometrically from lr / lr_mult (stem) to lr (classifier), or with `layer_decay`
    one group per fine-grained layer at ``lr * layer_decay_scales``. Weight decay skips 1-D
    parameters (biases, norms)."""
    named = dict(model.named_parameters())
    active = [names for i, (_, names) in enumerate(groups) if i >= first]
    param_groups, max_lrs = [], []
    if layer_decay is not None:
        scales = layer_decay_scales(model, layer_decay)
        trained = {m for names in active for m in names}
        by_scale: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for m in named:  # definition order: shallow to deep
            if m in trained:
                key = (scales.get(m, 1.0), named[m].ndim > 1)
                by_scale.setdefault(key, []).append(named[m])
        for (scale, decays), params in sorted(by_scale.items()):
            param_groups.append({"params": params, "weight_decay": weight_decay if decays else 0.0})
            max_lrs.append(lr * scale)
        return torch.optim.AdamW(param_groups, lr=lr), max_lrs
    n = len(active)
    for k, names in enumerate(active):
        scale = lr_mult ** (-(n - 1 - k) / max(n - 1, 1)) if n > 1 else 1.0
        decay = [named[m] for m in names if named[m].ndim > 1]
        no_decay = [named[m] for m in names if named[m].ndim <= 1]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append({"params": params, "weight_decay": wd})
                max_lrs.append(lr * scale)
    return torch.optim.AdamW(param_groups, lr=lr), max_lrs
