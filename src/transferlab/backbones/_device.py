"""Where a backbone runs and in which precision: the one device and the one "auto" precision
rule of the package (extraction and fine-tuning both ask here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transferlab._internal.choices import TORCH_PRECISIONS
from transferlab.exceptions import InvalidParameterError

if TYPE_CHECKING:  # torch is imported where a device is resolved, not to read PRECISIONS
    import torch

__all__ = ["PRECISIONS", "resolve_device", "use_bf16"]

#: Accepted `precision` values: ``"auto"`` picks per device (see `use_bf16`).
PRECISIONS = TORCH_PRECISIONS


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked and returned."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(
            f"device={device!r} asked for, but CUDA is not available here; use 'cpu'"
        )
    return dev


def use_bf16(precision: str, device: torch.device, *, cpu: bool = True) -> bool:
    """Whether to run under bf16 autocast: ``"bf16"`` yes, ``"fp32"`` no, ``"auto"`` where the
    hardware does bf16 natively: a GPU that supports it, or (when `cpu`) a CPU with
    AVX-512-BF16/AMX, since emulated bf16 on other CPUs measured several times slower than fp32
    (issue 8).

    Fine-tuning takes the CPU's bf16 (``cpu=True``). Feature extraction passes ``cpu=False``: on
    CPU its vectors are the fp32 reference the cache and the ONNX engine agree with to 1e-4, so
    "auto" keeps fp32 there and takes bf16 on a GPU only.

    Raises:
        InvalidParameterError: `precision` is not one of `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise InvalidParameterError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    import torch

    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if not cpu or device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
