"""Saved models: a directory any `transferlab predict` can load, and that refuses to load wrongly.

Two kinds share one format (`_base`): a `TransferModel` (`_transfer`: feature extractor + fitted
probe) and a `FinetunedModel` (`_finetuned`: the whole network). `load_model` (`_io`) reads
either back, checking versions and weight digests; `export_onnx` (`_export`) writes one as ONNX.
"""

from transferlab.models._base import FORMAT_VERSION as FORMAT_VERSION
from transferlab.models._base import MAX_TRAIN_INDEX as MAX_TRAIN_INDEX
from transferlab.models._base import Prediction as Prediction
from transferlab.models._export import EXPORT_FORMATS as EXPORT_FORMATS
from transferlab.models._export import export_onnx as export_onnx
from transferlab.models._finetuned import FinetunedModel as FinetunedModel
from transferlab.models._io import load_model as load_model
from transferlab.models._transfer import TransferModel as TransferModel

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_VERSION",
    "MAX_TRAIN_INDEX",
    "FinetunedModel",
    "Prediction",
    "TransferModel",
    "export_onnx",
    "load_model",
]
