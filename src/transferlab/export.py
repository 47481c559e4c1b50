"""Deprecated home of ONNX export: moved to `transferlab.models.export`."""

from transferlab._internal.deprecation import moved_module

__getattr__ = moved_module("transferlab.export", "transferlab.models.export")
