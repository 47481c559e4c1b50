"""ONNX export of a saved model (`transferlab.models.export` is where the CLI and users import it
from; the code is in `transferlab.models._export`)."""

from transferlab.models._export import EXPORT_FORMATS as EXPORT_FORMATS
from transferlab.models._export import export_onnx as export_onnx

__all__ = ["EXPORT_FORMATS", "export_onnx"]
