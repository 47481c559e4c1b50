"""TF-"same" padding made static for one input size, so an exported graph carries no padding
arithmetic.

timm's ``tf_*`` models (the packaged EfficientNet-Lites among them) pad their strided convs the
TensorFlow way: asymmetric, and computed from the input size on every call (`Conv2dSame`,
`MaxPool2dSame`, `AvgPool2dSame` call `timm.layers.pad_same`). Traced to ONNX, each of those
becomes a Shape/Gather/Cast/Div/Ceil/Sub/Concat/Slice chain ahead of the conv. That chain costs
time on every batch and stands between the quantiser and the conv it should fuse with. At a fixed
input size the pads are known constants: `static_padding` computes them once, by one forward
pass, and makes each such layer apply them as literal numbers (one constant ``Pad``, which ONNX
Runtime folds into the conv's own ``pads``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.exceptions import InvalidParameterError

__all__ = ["fold_pads_into_convs", "same_padding_layers", "simplify_onnx", "static_padding"]


def _same_pads(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int, int, int]:
    """TF "SAME" pads for an (H, W) input, in `F.pad` order: (left, right, top, bottom).

    The same arithmetic as `timm.layers.padding.pad_same`, on Python ints.
    """
    pads = []
    for x, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        pads.append(max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0))
    pad_h, pad_w = pads
    return (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of `model` that pad TF-"same" at run time (by module path).

    Matched by class name, so no timm import is needed here and timm versions that move the
    classes still match: ``Conv2dSame``, ``Conv2dSameExport``, ``MaxPool2dSame``, ``AvgPool2dSame``.
    """
    names = {"Conv2dSame", "Conv2dSameExport", "MaxPool2dSame", "AvgPool2dSame"}
    return {n: m for n, m in model.named_modules() if type(m).__name__ in names}


def _static_forward(module: nn.Module, pads: tuple[int, int, int, int], hw: tuple[int, int]):
    """A forward for `module` that pads by the constants `pads` and then runs the unpadded op."""
    kind = type(module).__name__

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != hw:
            raise InvalidParameterError(
                f"static_padding was set up for {hw[0]}x{hw[1]} inputs at this layer, got "
                f"{tuple(x.shape[-2:])}: call the model at the input_size given to static_padding"
            )
        if kind.startswith("Conv2dSame"):
            m: Any = module
            x = F.pad(x, pads)
            return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        if kind == "MaxPool2dSame":
            m = module
            x = F.pad(x, pads, value=-float("inf"))
            return F.max_pool2d(x, m.kernel_size, m.stride, 0, m.dilation, m.ceil_mode)
        m = module  # AvgPool2dSame: timm pads with zeros and counts them, as here
        x = F.pad(x, pads)
        return F.avg_pool2d(x, m.kernel_size, m.stride, 0, m.ceil_mode, m.count_include_pad)

    return forward


@contextlib.contextmanager
def static_padding(model: nn.Module, input_size: Sequence[int]) -> Iterator[dict[str, tuple]]:
    """Within the block, `model`'s TF-"same" layers pad by constants fixed for `input_size`.

    One forward pass at `input_size` records the spatial size reaching each such layer; each
    layer's ``forward`` is then replaced (on the instance, for the duration of the block) by one
    that applies those pads as numbers and runs the op unpadded, with the layer's own weights.
    Nothing else changes: module paths, parameters, state dict and hooks stay as they were, and the
    original forwards come back on exit, even on an error. Outputs equal the original's (same
    ops, same numbers). Called at another size inside the block, a layer raises rather than pad
    wrongly; while tracing (ONNX export) that check is skipped, so it adds no ops.

    Args:
        model: a module, typically a timm ``tf_*`` model; one without such layers passes through.
        input_size: ``(C, H, W)`` or ``(H, W)`` of the inputs the block will use.

    Yields:
        module path -> the ``(left, right, top, bottom)`` pads fixed for it.

    Example:
        >>> import torch, timm
        >>> m = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
        >>> with static_padding(m, (3, 224, 224)) as pads:
        ...     y = m(torch.zeros(1, 3, 224, 224))
        >>> pads["conv_stem"]
        (0, 1, 0, 1)
    """
    size = [int(s) for s in input_size]
    if len(size) not in (2, 3) or min(size) < 1:
        raise InvalidParameterError(
            f"input_size must be (C, H, W) or (H, W) of positive ints, got {tuple(input_size)!r}"
        )
    layers = same_padding_layers(model)
    if not layers:
        yield {}
        return
    channels = size[0] if len(size) == 3 else _first_in_channels(model)
    hw_in: dict[str, tuple[int, int]] = {}

    def make_hook(name: str):
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            hw_in[name] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, channels, *size[-2:], device=device))
    finally:
        for h in handles:
            h.remove()
    pads: dict[str, tuple[int, int, int, int]] = {}
    patched: list[nn.Module] = []
    try:
        for name, m in layers.items():
            if name not in hw_in:  # not on the forward path (an unused head): leave it be
                continue
            mm: Any = m
            kernel = mm.weight.shape[-2:] if hasattr(mm, "weight") else _pair(mm.kernel_size)
            dilation = _pair(getattr(mm, "dilation", 1))
            pads[name] = _same_pads(hw_in[name], kernel, _pair(mm.stride), dilation)
            m.forward = _static_forward(m, pads[name], hw_in[name])  # type: ignore[method-assign]
            patched.append(m)
        yield pads
    finally:
        for m in patched:
            del m.forward  # the instance attribute; the class's forward shows through again


def _first_in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def fold_pads_into_convs(model: Any) -> int:
    """Fold each zero ``Pad`` that feeds only ``Conv`` nodes into their ``pads`` attribute, in place.

    The TorchScript exporter writes a constant ``F.pad`` as a separate ``Pad`` node, and ONNX
    Runtime's optimiser leaves it there. A conv that pads itself needs no padded copy of its input
    in memory, and the quantiser sees one Conv rather than Pad -> Conv. Only the safe case is
    folded: constant mode, fill value 0 (or none), constant pads on the two spatial axes only.

    Args:
        model: an `onnx.ModelProto` (4-D NCHW convs).

    Returns:
        How many Pad nodes were folded.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    inits.update(consts)
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.output[0] in outputs:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        mode = attrs.get("mode", b"constant")
        if mode not in (b"constant", "constant") or (len(pad.input) > 3 and pad.input[3]):
            continue  # other modes, or an 'axes' input: not a conv's zero padding
        if len(pad.input) < 2 or pad.input[1] not in inits:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = inits.get(pad.input[2])
            if value is None or float(value.reshape(-1)[0]) != 0.0:
                continue
        pads = [int(v) for v in inits[pad.input[1]].reshape(-1)]
        users = consumers.get(pad.output[0], [])
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            continue
        if not users or any(u.op_type != "Conv" or u.input[0] != pad.output[0] for u in users):
            continue
        extra = [
            pads[2],
            pads[3],
            pads[6],
            pads[7],
        ]  # ONNX Conv order: h_begin, w_begin, h_end, w_end
        for conv in users:
            cattrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
            auto = cattrs.get("auto_pad", b"NOTSET")
            if auto not in (b"NOTSET", "NOTSET"):
                break
        else:
            for conv in users:
                old = [a for a in conv.attribute if a.name == "pads"]
                base = list(helper.get_attribute_value(old[0])) if old else [0, 0, 0, 0]
                for a in old:
                    conv.attribute.remove(a)
                conv.attribute.append(
                    helper.make_attribute("pads", [b + e for b, e in zip(base, extra, strict=True)])
                )
                conv.input[0] = pad.input[0]
            folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)  # the pads tensors, now unused
    return len(folded)


def simplify_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None) -> int:
    """Constant-fold an exported graph (ONNX Runtime's basic, hardware-independent level) and
    fold its zero pads into the convs; written to `dst` (default: over `src`).

    After `static_padding` the exporter still leaves each constant ``F.pad`` as a small chain of
    ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast on constants; this leaves Conv, Clip,
    Add, pooling. Returns how many pads were folded into convs.
    """
    import onnx
    import onnxruntime as ort

    src, dst = os.fspath(src), os.fspath(dst if dst is not None else src)
    tmp = f"{dst}.{os.getpid()}.basic.tmp"
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = tmp
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        model = onnx.load(tmp)
        n = fold_pads_into_convs(model)
        onnx.checker.check_model(model)
        onnx.save(model, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n
