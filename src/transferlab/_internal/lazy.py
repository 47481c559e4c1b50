"""PEP 562 lazy package namespaces: a package lists its public names and the private module
that defines each; a name's module is imported on first use.

Why: `transferlab.data`, `transferlab.backbones` and `transferlab.features` each hold torch-free
parts (decoding, the feature cache, the ONNX Runtime session, the backbone card) beside parts
built on torch. Eager re-exports made every import of the package pay 5-8 s for torch and timm;
a run whose network runs in ONNX Runtime, or whose vectors are all cached, never needs them
(issue 17).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_namespace"]


def lazy_namespace(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for `package`, where ``names[name]`` is the module defining
    `name`: a submodule of `package` (``"_cache"``) or a full module name (``"transferlab.data"``)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        full = module if module.startswith("transferlab.") else f"{package}.{module}"
        value = getattr(importlib.import_module(full), name)
        globals_of(package)[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals_of(package)) | set(names))

    return __getattr__, __dir__


def globals_of(package: str) -> dict[str, Any]:
    import sys

    return vars(sys.modules[package])
