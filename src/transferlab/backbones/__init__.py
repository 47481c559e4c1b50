"""Pretrained backbones: a registry of names -> specs, a loader, preprocessing and layer taps.

* `_registry`: `BackboneSpec`, `register_backbone`, `list_backbones`, `get_backbone_spec`.
* `_backbone`: `load_backbone` and `Backbone` (timm model, preprocessing, named taps, pooling).
* `_weights`: weights from files and pip packages; the digest that identifies them.
* `_batchnorm`: `reestimate_bn` (AdaBN). `_onnx`: `OnnxTaps`, the taps run by ONNX Runtime.
* `_device`: `resolve_device` and `use_bf16`, the one "auto" precision rule.
"""

from __future__ import annotations

from transferlab.backbones._backbone import POOLS as POOLS
from transferlab.backbones._backbone import Backbone as Backbone
from transferlab.backbones._backbone import TapInfo as TapInfo
from transferlab.backbones._backbone import _stage_modules as _stage_modules
from transferlab.backbones._backbone import _stem_module as _stem_module
from transferlab.backbones._backbone import load_backbone as load_backbone
from transferlab.backbones._backbone import pool_features as pool_features
from transferlab.backbones._batchnorm import reestimate_bn as reestimate_bn
from transferlab.backbones._device import PRECISIONS as PRECISIONS
from transferlab.backbones._device import resolve_device as resolve_device
from transferlab.backbones._device import use_bf16 as use_bf16
from transferlab.backbones._onnx import OnnxTaps as OnnxTaps
from transferlab.backbones._onnx import _TapGraph as _TapGraph
from transferlab.backbones._registry import WEIGHT_SOURCES as WEIGHT_SOURCES
from transferlab.backbones._registry import BackboneSpec as BackboneSpec
from transferlab.backbones._registry import get_backbone_spec as get_backbone_spec
from transferlab.backbones._registry import list_backbones as list_backbones
from transferlab.backbones._registry import register_backbone as register_backbone
from transferlab.backbones._weights import _weights_digest as _weights_digest

__all__ = [
    "POOLS",
    "PRECISIONS",
    "WEIGHT_SOURCES",
    "Backbone",
    "BackboneSpec",
    "OnnxTaps",
    "TapInfo",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone",
    "pool_features",
    "reestimate_bn",
    "register_backbone",
    "resolve_device",
    "use_bf16",
]
