"""Backbone families: which kind of network a timm model is, read from its modules.

Why: the measures and recipes of transfer differ by kind. BatchNorm statistics (their shift,
AdaBN, the ``--bn`` policy) exist only in BatchNorm networks; transformers and ConvNeXt
normalise each image on its own (LayerNorm), so their diagnosis reads activation statistics
instead, and their fine-tuning recipe is layer-wise LR decay over the blocks (BEiT, DINOv2,
timm's ``--layer-decay``) rather than fastai's coarse groups with an LR spread. One rule, read
from the built model rather than from its name, so that any timm model gets a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FAMILIES", "Family", "family_of", "family_of_name", "has_batchnorm"]


@dataclass(frozen=True)
class Family:
    """A kind of backbone and what follows from it.

    Attributes:
        name: ``batchnorm-cnn``, ``layernorm-cnn`` or ``transformer``.
        examples: timm architectures of the kind.
        batchnorm: whether BatchNorm statistics exist to measure, freeze or re-estimate.
        tokens: whether stage outputs are token sequences (class token and patch tokens).
    """

    name: str
    examples: str
    batchnorm: bool
    tokens: bool


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("batchnorm-cnn", "ResNet, EfficientNet, MobileNet, RegNet", True, False),
        Family("layernorm-cnn", "ConvNeXt", False, False),
        Family("transformer", "ViT, DeiT, DINOv2, CLIP image towers, Swin, BEiT, EVA", False, True),
    )
}


def has_batchnorm(model: Any) -> bool:
    """True when `model` has a BatchNorm layer with running statistics."""
    from torch import nn

    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in model.modules()
    )


def _has_attention(model: Any) -> bool:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            return True
        # timm's attention modules (vision_transformer.Attention, swin's WindowAttention, EVA's
        # EvaAttention ...) share the name; a squeeze-excite block does not
        if type(m).__name__.endswith("Attention") and any(
            hasattr(m, a) for a in ("qkv", "q_proj", "q")
        ):
            return True
    return False


def family_of(model: Any) -> Family:
    """The family of a built timm model: attention blocks make a transformer (hybrids included),
    else BatchNorm with running statistics a BatchNorm CNN, else a LayerNorm CNN."""
    if _has_attention(model) or hasattr(model, "patch_embed"):
        return FAMILIES["transformer"]
    if has_batchnorm(model):
        return FAMILIES["batchnorm-cnn"]
    return FAMILIES["layernorm-cnn"]


def family_of_name(timm_name: str) -> Family:
    """The family of a timm architecture, built on PyTorch's meta device (no memory, no
    weights: a fraction of a second even for large models)."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(timm_name.split(".")[0], pretrained=False)
    return family_of(model)
