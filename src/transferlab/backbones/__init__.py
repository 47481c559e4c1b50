"""Pretrained backbones: a registry of names -> specs, a loader, preprocessing and layer taps.

* `_registry`: `BackboneSpec`, `register_backbone`, `list_backbones`, `get_backbone_spec`.
* `_backbone`: `load_backbone` and `Backbone` (timm model, preprocessing, named taps, pooling).
* `_weights`: weights from files and pip packages; the digest that identifies them.
* `_batchnorm`: `reestimate_bn` (AdaBN). `_onnx`: `OnnxTaps`, the export of the taps to ONNX.
* `_ort`: `OrtTaps` runs an export in ONNX Runtime and `onnx_path` says where it lives (no torch).
* `_card`: `BackboneCard`, a loaded backbone's identity, preprocessing and taps, kept on disk so
  later runs need no model (no torch); `TapInfo`, `POOLS`.
* `_family`: `family_of` (BatchNorm CNN, LayerNorm CNN or transformer) and `FAMILIES`.
* `_device`: `resolve_device` and `use_bf16`, the one "auto" precision rule.

Names load on first use (`_internal.lazy`): the torch-free parts import no torch.
"""

from __future__ import annotations

from transferlab._internal.lazy import lazy_namespace

# name -> the private module that defines it (imported on first use: see _internal.lazy)
_NAMES = {
    "POOLS": "_card",
    "TOKEN_POOLS": "_card",
    "FAMILIES": "_family",
    "Family": "_family",
    "family_of": "_family",
    "family_of_name": "_family",
    "has_batchnorm": "_family",
    "Backbone": "_backbone",
    "TapInfo": "_card",
    "BackboneCard": "_card",
    "cuda_may_be_present": "_card",
    "_stage_modules": "_backbone",
    "_stem_module": "_backbone",
    "load_backbone": "_backbone",
    "pool_features": "_backbone",
    "reestimate_bn": "_batchnorm",
    "PRECISIONS": "_device",
    "resolve_device": "_device",
    "use_bf16": "_device",
    "OnnxTaps": "_onnx",
    "OrtTaps": "_ort",
    "ORT_PRECISIONS": "_ort",
    "onnx_path": "_ort",
    "cpu_threads": "_ort",
    "_TapGraph": "_onnx",
    "WEIGHT_SOURCES": "_registry",
    "RECOMMENDED": "_registry",
    "BackboneSpec": "_registry",
    "get_backbone_spec": "_registry",
    "list_backbones": "_registry",
    "register_backbone": "_registry",
    "_weights_digest": "_weights",
}

__all__ = [
    "FAMILIES",
    "POOLS",
    "PRECISIONS",
    "RECOMMENDED",
    "TOKEN_POOLS",
    "WEIGHT_SOURCES",
    "Backbone",
    "BackboneCard",
    "BackboneSpec",
    "Family",
    "OnnxTaps",
    "OrtTaps",
    "TapInfo",
    "family_of",
    "family_of_name",
    "get_backbone_spec",
    "has_batchnorm",
    "list_backbones",
    "load_backbone",
    "pool_features",
    "reestimate_bn",
    "register_backbone",
    "resolve_device",
    "use_bf16",
]

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES)
