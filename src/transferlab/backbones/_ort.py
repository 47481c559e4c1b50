"""The backbone's ONNX export run by ONNX Runtime, with no torch import: where the export of a
(weights, layers, pool, input size, precision) lives, and `OrtTaps`, its session.

`_onnx.OnnxTaps` makes the export (that needs torch, once); this module only runs it, so a
process whose export exists extracts features with NumPy, PIL and ONNX Runtime alone (issue 17).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = ["ORT_PRECISIONS", "OrtTaps", "cpu_threads", "onnx_path"]

#: What an export computes in: the float graph, or its static INT8 quantisation.
ORT_PRECISIONS = ("fp32", "int8")
#: Bump when exports change (2: static TF-"same" padding, pads folded into the convs): older
#: files are then left alone and new ones made.
EXPORT_FORMAT = 2


class _Identity(Protocol):
    """A `Backbone` or a `BackboneCard`: all the path needs."""

    @property
    def name(self) -> str: ...
    @property
    def data_config(self) -> Mapping[str, Any]: ...
    def fingerprint(self) -> str: ...


def cpu_threads() -> int:
    """Cores this process may use (its affinity mask), the ONNX Runtime thread count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def onnx_path(
    backbone: _Identity,
    layers: Iterable[str],
    pool: str,
    directory: str | os.PathLike[str],
    *,
    precision: str = "fp32",
) -> str:
    """Where the export for these weights, layers, pool, input size (and precision) lives."""
    if precision not in ORT_PRECISIONS:
        raise InvalidParameterError(
            f"precision must be one of {', '.join(ORT_PRECISIONS)}, got {precision!r}"
        )
    size = list(backbone.data_config["input_size"])
    key = hashlib.sha256(
        f"{backbone.fingerprint()}|{','.join(layers)}|{pool}|{size}|{EXPORT_FORMAT}".encode()
    ).hexdigest()[:24]
    suffix = "" if precision == "fp32" else f"-{precision}"
    return os.path.join(os.fspath(directory), f"{backbone.name}-{key}{suffix}.onnx")


class OrtTaps:
    """An exported tap graph in an ONNX Runtime CPU session: batch (N, 3, H, W) float32 in,
    one pooled array per layer out.

    Args:
        path: the ``.onnx`` file (see `onnx_path`).
        layers: its outputs, in order.
        threads: intra-op threads (default: every core this process may use).
    """

    def __init__(self, path: str, layers: Iterable[str], *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise InvalidParameterError(
                "the ONNX engine needs onnxruntime: pip install onnxruntime"
            ) from exc
        self.path = path
        self.layers = list(layers)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        # idle ONNX Runtime threads sleep instead of spinning: the decode thread that prepares
        # the next batch gets the core (measured faster end to end on 2 cores; RESULTS.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.layers, outs, strict=True))
