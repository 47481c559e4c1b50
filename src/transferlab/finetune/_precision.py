"""The bf16 autocast policy of training on CPU: depthwise convolutions stay fp32.

Under CPU bf16 autocast every convolution runs in bf16. On an AVX-512-BF16 CPU (issue 17,
benchmarks/RESULTS.md, issue 17) that speeds up the dense and 1x1 convolutions (their backward
about 2x) but slows the backward of depthwise convolutions 2-5x (oneDNN's bf16 depthwise
weight-gradient kernels), so plain bf16 autocast trained EfficientNet-Lite0 *slower* than fp32.
Keeping the depthwise convolutions in fp32 takes the gain without that loss, and keeps the
layers with the fewest weights per output (where bf16 rounding weighs most) at full precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["depthwise_convs", "fp32_depthwise"]


def depthwise_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The grouped convolutions of `model` (depthwise: one group per input channel, or any
    grouping), which `fp32_depthwise` keeps out of bf16."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@contextmanager
def fp32_depthwise(model: nn.Module, device_type: str, *, enabled: bool) -> Iterator[int]:
    """While inside, `model`'s grouped convolutions run with `device_type` autocast disabled on
    an fp32 input (their backward follows in fp32); yields how many convolutions that is.

    Forward hooks, removed on exit, so the model, its ``state_dict`` and a later `predict` are
    untouched; outside autocast (validation) the hooks do nothing but a no-op cast.
    """
    if not enabled:
        yield 0
        return
    contexts: dict[int, Any] = {}

    def before(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        ctx = torch.autocast(device_type, enabled=False)
        ctx.__enter__()
        contexts[id(module)] = ctx
        return (args[0].float(), *args[1:])

    def after(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        contexts.pop(id(module)).__exit__(None, None, None)

    convs = depthwise_convs(model)
    handles = [c.register_forward_pre_hook(before) for c in convs]
    handles += [c.register_forward_hook(after) for c in convs]
    try:
        yield len(convs)
    finally:
        for h in handles:
            h.remove()
