"""Saved models: a directory any `transferlab predict` can load, and that refuses to load wrongly.

Two kinds share one format (`_base`): a `TransferModel` (`_transfer`: feature extractor + fitted
probe) and a `FinetunedModel` (`_finetuned`: the whole network). `load_model` (`_io`) reads
either back, checking versions and weight digests; `export_onnx` (`_export`) writes one as ONNX.
"""

from __future__ import annotations

from transferlab._internal.lazy import lazy_namespace

# name -> the private module that defines it (imported on first use: see _internal.lazy)
_NAMES = {
    "FORMAT_VERSION": "_base",
    "MAX_TRAIN_INDEX": "_base",
    "Prediction": "_base",
    "read_probe": "_base",
    "write_probe": "_base",
    "EXPORT_FORMATS": "_export",
    "export_onnx": "_export",
    "FinetunedModel": "_finetuned",
    "load_model": "_io",
    "TransferModel": "_transfer",
}

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_VERSION",
    "MAX_TRAIN_INDEX",
    "FinetunedModel",
    "Prediction",
    "TransferModel",
    "export_onnx",
    "load_model",
    "read_probe",
    "write_probe",
]

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES)
