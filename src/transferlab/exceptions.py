"""Errors users can act on. Each subclasses a builtin so callers can catch the usual type too.

Messages name the file, field or parameter, what was expected and what was received, and
suggest a fix. The CLI prints them without a traceback; the service maps them to 4xx.
"""

from __future__ import annotations

__all__ = [
    "BackboneMismatchError",
    "DatasetError",
    "DatasetNotFoundError",
    "DistributedError",
    "ImageLoadError",
    "InvalidParameterError",
    "ModelFormatError",
    "TransferlabError",
    "UnknownBackboneError",
    "UnknownLayerError",
    "WeightsNotFoundError",
]


class TransferlabError(Exception):
    """Base class for every error transferlab raises on purpose."""


class InvalidParameterError(TransferlabError, ValueError):
    """A parameter has a value outside what it accepts."""


class DatasetError(TransferlabError, ValueError):
    """The dataset layout or labels cannot be used (empty class, single class, bad CSV...)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset path does not exist."""


class ImageLoadError(TransferlabError, OSError):
    """One image could not be decoded; `path` and `reason` say which and why."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnknownBackboneError(TransferlabError, ValueError):
    """No registered backbone nor timm model has this name."""


class UnknownLayerError(TransferlabError, ValueError):
    """The backbone has no tap of this name."""


class WeightsNotFoundError(TransferlabError, FileNotFoundError):
    """Pretrained weights are neither packaged, cached, nor reachable."""


class ModelFormatError(TransferlabError, ValueError):
    """A saved model directory is missing files or was written by an incompatible version."""


class BackboneMismatchError(ModelFormatError):
    """A saved model was trained on other backbone weights than the ones available now."""


class DistributedError(TransferlabError, RuntimeError):
    """Distributed (torchrun/DDP) training could not start or a worker process failed."""
