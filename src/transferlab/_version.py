"""The library's version, in a module of its own so that any layer can read it without importing
the package `__init__` (which would put every layer in one import circle)."""

__version__ = "0.1.0"
