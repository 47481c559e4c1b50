"""Deprecated home of the built-in demo data: it moved to `transferlab.data`."""

from transferlab._internal.deprecation import moved_module

__getattr__ = moved_module("transferlab.samples", "transferlab.data")
