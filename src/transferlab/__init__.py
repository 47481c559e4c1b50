"""transferlab: transfer learning on images, with an honest account of why it works or fails.

The public API is re-exported here; heavy modules (torch, timm) load only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferlab._version import __version__

# name -> module that defines it. Importing `transferlab` stays cheap (no torch) so that the CLI's
# `--help` and error paths are quick; the names resolve on first attribute access (PEP 562).
_LAZY = {
    "TransferlabError": "transferlab.exceptions",
    "load_image": "transferlab.data",
    "load_dataset": "transferlab.data",
    "Dataset": "transferlab.data",
    "Sample": "transferlab.data",
    "BackboneSpec": "transferlab.backbones",
    "list_backbones": "transferlab.backbones",
    "get_backbone_spec": "transferlab.backbones",
    "load_backbone": "transferlab.backbones",
    "register_backbone": "transferlab.backbones",
    "FeatureExtractor": "transferlab.features",
    "FeatureCache": "transferlab.features",
    "LinearProbe": "transferlab.probe",
    "evaluate_predictions": "transferlab.evaluate",
    "fit": "transferlab.pipeline",
    "FitConfig": "transferlab.pipeline",
    "FitResult": "transferlab.pipeline",
    "TransferModel": "transferlab.models",
    "load_model": "transferlab.models",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from transferlab.backbones import BackboneSpec as BackboneSpec
    from transferlab.backbones import get_backbone_spec as get_backbone_spec
    from transferlab.backbones import list_backbones as list_backbones
    from transferlab.backbones import load_backbone as load_backbone
    from transferlab.backbones import register_backbone as register_backbone
    from transferlab.data import Dataset as Dataset
    from transferlab.data import Sample as Sample
    from transferlab.data import load_dataset as load_dataset
    from transferlab.data import load_image as load_image
    from transferlab.evaluate import evaluate_predictions as evaluate_predictions
    from transferlab.exceptions import TransferlabError as TransferlabError
    from transferlab.features import FeatureCache as FeatureCache
    from transferlab.features import FeatureExtractor as FeatureExtractor
    from transferlab.models import TransferModel as TransferModel
    from transferlab.models import load_model as load_model
    from transferlab.pipeline import FitConfig as FitConfig
    from transferlab.pipeline import FitResult as FitResult
    from transferlab.pipeline import fit as fit
    from transferlab.probe import LinearProbe as LinearProbe


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
