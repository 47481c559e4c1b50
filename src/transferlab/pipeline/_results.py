"""What a run returns: `RunResult` (the files it wrote and a typed metrics object).

Each run's metrics are a dataclass (see the run's module) deriving from `Metrics`, which writes
its JSON file (metrics.json, diagnosis.json, ...) through the one encoder and reads like that JSON
(``result.metrics["accuracy"]``), so callers written against the old dicts keep working.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from transferlab._internal.deprecation import warn_once
from transferlab._internal.json import write_json

__all__ = ["FLATTEN", "OMIT_NONE", "Metrics", "RunResult", "config_alias", "json_key"]

#: field metadata: the key is written only when the value is not None (``test`` without a test
#: split), as in ``field(default=None, metadata=OMIT_NONE)``
OMIT_NONE: dict[str, Any] = {"omit_none": True}
#: field metadata: the field holds a nested object whose keys are written at this level
FLATTEN: dict[str, Any] = {"flatten": True}


def json_key(name: str) -> dict[str, Any]:
    """Field metadata: the JSON key when it is not the field's name (``at_threshold_0.5``)."""
    return {"key": name}


class Metrics(Mapping[str, Any]):
    """Base of the typed metrics: `to_dict` is exactly the JSON the run writes.

    Subclasses are ``@dataclass(kw_only=True)``; field order is key order. ``FILE`` names the file
    `write` creates; ``ALIASES`` maps a field to older key names written beside it with the same
    value (one name per value in Python, the old spellings kept in the JSON for its readers).
    """

    FILE: ClassVar[str] = "metrics.json"
    ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            meta = f.metadata
            if meta.get("flatten"):
                out.update(value.to_dict() if hasattr(value, "to_dict") else value)
                continue
            if value is None and meta.get("omit_none"):
                continue
            out[meta.get("key", f.name)] = value
            for alias in self.ALIASES.get(f.name, ()):
                out[alias] = value
        return out

    def write(self, out: str | os.PathLike[str]) -> Path:
        """Write ``out/FILE`` from `to_dict`; returns its path."""
        return write_json(Path(out) / self.FILE, self.to_dict())

    def __getattr__(self, name: str) -> Any:
        """Fields of a flattened group read as this object's own (``metrics.n_train``), as
        they are written at this level of the JSON."""
        if not name.startswith("__"):
            for f in fields(self):  # type: ignore[arg-type]
                if f.metadata.get("flatten"):
                    group = self.__dict__.get(f.name)
                    if group is not None and hasattr(group, name):
                        return getattr(group, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # read access as the JSON dict (old callers index result.metrics by key)
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass
class RunResult:
    """What a run produced: its typed metrics and where its files are.

    Attributes:
        metrics: the run's `Metrics` (a plain mapping only for results read back from disk).
        out: the run directory (None: a run asked to write nothing).
        model_dir: the saved (fit, finetune) or evaluated (evaluate) model; None otherwise.
        report: report.html, when the run writes one.
        confusion_png: the confusion matrix plot, when there is one.
        skipped: (path, reason) of the images that could not be used.
        metrics_file: the JSON file written from `metrics`.
    """

    metrics: Metrics | Mapping[str, Any]
    out: Path | None
    model_dir: Path | None = None
    report: Path | None = None
    confusion_png: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    metrics_file: Path | None = None

    @classmethod
    def written(cls, metrics: Metrics, out: Path, **files: Any) -> RunResult:
        """Write `metrics` to `out` (its FILE) and return the result naming it and `files`: how
        every run that writes its metrics ends."""
        return cls(metrics=metrics, out=out, metrics_file=metrics.write(out), **files)

    def to_dict(self) -> dict[str, Any]:
        def text(p: Path | None) -> str | None:
            return str(p) if p is not None else None

        return {
            "metrics": dict(self.metrics),
            "out": text(self.out),
            "model_dir": text(self.model_dir),
            "report": text(self.report),
            "confusion_png": text(self.confusion_png),
            "skipped": list(self.skipped),
            "metrics_file": text(self.metrics_file),
        }


def config_alias(
    old: str, run: Callable[[Any], RunResult], config: Callable[..., Any]
) -> Callable[..., RunResult]:
    """The deprecated ``old(data, out, **kwargs)`` of a run now called as ``run(config(data=...,
    out=..., **kwargs))``: it forwards the same keyword arguments and warns once."""
    new = f"{run.__name__}({config.__name__}(...))"

    def alias(
        data: str | os.PathLike[str], out: str | os.PathLike[str], **kwargs: Any
    ) -> RunResult:
        warn_once(f"transferlab.pipeline.{old}", f"transferlab.pipeline.{run.__name__}")
        return run(config(data=data, out=out, **kwargs))

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated: `{new}` (same keyword arguments)."
    return alias
