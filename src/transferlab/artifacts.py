"""Deprecated home of saved models: everything here moved to `transferlab.models`."""

from transferlab._internal.deprecation import moved_module

__getattr__ = moved_module("transferlab.artifacts", "transferlab.models")
