"""INT8 static quantisation of an exported backbone graph, and how far it strays from fp32.

`quantize_static_int8` turns an fp32 ONNX graph into a QDQ int8 one with ONNX Runtime's static
quantiser, calibrated on batches the caller gives (the user's own training images, preprocessed:
activation ranges come from the images the features will be taken of). `measure_fidelity` runs
both graphs on the same batches and reports each output's cosine to fp32, per image, so a run can
say what int8 cost before anyone trusts it.

Only numpy, onnx and onnxruntime are imported here (never torch or timm): quantising and checking
run in torch-free processes. The defaults are the ones benchmarks/bench_int8.py measured best on
training and validation images (benchmarks/RESULTS.md, issue 17).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = [
    "CALIBRATION_METHODS",
    "FidelityReport",
    "QuantizationResult",
    "measure_fidelity",
    "quantize_static_int8",
    "resolve_keep_float",
]

#: Calibration methods: how an activation's int8 range is chosen from the calibration images.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")

#: Default calibration method and percentile (see benchmarks/RESULTS.md, issue 17).
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.999
#: Default nodes kept in float (tokens of `resolve_keep_float`): for lite0, the stem and stages
#: 0-1 (the 112x112 and 56x56 layers); measured in benchmarks/RESULTS.md, issue 17.
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("first_convs:9",)


@dataclass(frozen=True)
class QuantizationResult:
    """What `quantize_static_int8` did: enough to record beside the int8 graph and say in a run.

    Attributes:
        int8_path: the quantised graph.
        fp32_path: the graph it came from.
        method: calibration method (one of `CALIBRATION_METHODS`).
        percentile: the percentile, for ``method="percentile"`` (else None).
        per_channel: weights quantised per output channel (else per tensor).
        reduce_range: weights on 7 bits (for CPUs without VNNI, where u8 x s8 can saturate).
        activation_type: ``"uint8"`` or ``"int8"``; weights are always ``"int8"``.
        calibration_images: how many images the ranges were calibrated on.
        kept_float: names of the nodes left in float.
        quantized_nodes: how many nodes were given int8 inputs (QDQ pairs in front of them).
        seconds: wall time of pre-processing, calibration and quantisation.
        onnxruntime_version: the quantiser's version.
    """

    int8_path: str
    fp32_path: str
    method: str
    percentile: float | None
    per_channel: bool
    reduce_range: bool
    activation_type: str
    calibration_images: int
    kept_float: tuple[str, ...]
    quantized_nodes: int
    seconds: float
    onnxruntime_version: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kept_float"] = list(self.kept_float)
        return d


@dataclass(frozen=True)
class FidelityReport:
    """How close the int8 graph's outputs are to fp32's on the same images.

    Attributes:
        images: how many images were compared.
        mean_cosine: output name -> mean over images of the cosine between int8 and fp32 vectors.
        min_cosine: output name -> the lowest such cosine (the worst image).
        max_abs_error: output name -> largest absolute difference in any element.
        cosines: output name -> the per-image cosines (for plots, percentiles), not in `to_dict`.
    """

    images: int
    mean_cosine: dict[str, float]
    min_cosine: dict[str, float]
    max_abs_error: dict[str, float]
    cosines: dict[str, np.ndarray] = field(repr=False, compare=False)

    @property
    def worst_mean_cosine(self) -> float:
        """The lowest mean cosine over the outputs: the one figure to hold against a target."""
        return min(self.mean_cosine.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "mean_cosine": dict(self.mean_cosine),
            "min_cosine": dict(self.min_cosine),
            "max_abs_error": dict(self.max_abs_error),
        }


class _BatchReader:
    """`CalibrationDataReader` over the caller's batches (held as a list), with the range
    selection ONNX Runtime's strided calibration uses: the calibrator then reduces each batch's
    activations to ranges or histograms before the next, rather than holding every activation of
    every calibration image at once (lite0: ~20 MB an image, so 5 GB for 256)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches: list[np.ndarray] = []
        for batch in batches:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if batch.ndim != 4:
                raise InvalidParameterError(
                    f"calibration batches must be NCHW float32 arrays, got shape {batch.shape}"
                )
            if batch.shape[0]:
                self.batches.append(batch)
        self.images = sum(int(b.shape[0]) for b in self.batches)
        self._it: Iterator[np.ndarray] = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


def resolve_keep_float(model: Any, keep_float: Iterable[str]) -> list[str]:
    """Node names of `model` (an `onnx.ModelProto`) named by the tokens in `keep_float`.

    Tokens: ``"first_conv"`` and ``"last_conv"`` (the first and last Conv in graph order);
    ``"first_convs:N"``, every node from the input through the N-th Conv (the high-resolution start
    of the network, where int8 error is born and then carried through every later layer: on
    pneumoniamnist, lite0's first 9 convs in float lift the cosine from 0.956 to 0.988); an op
    type present in the graph (``"GlobalAveragePool"``: every such node); or a node name.

    Raises:
        InvalidParameterError: a token matches nothing (so a renamed node is not silently
            quantised after all).
    """
    nodes = list(model.graph.node)
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    by_op: dict[str, list[str]] = {}
    for n in nodes:
        by_op.setdefault(n.op_type, []).append(n.name)
    names = {n.name for n in nodes}
    out: list[str] = []
    for token in keep_float:
        head, _, count = token.partition(":")
        if head == "first_convs" and count.isdigit() and 0 < int(count) <= len(convs):
            last = convs[int(count) - 1]
            end = next(i for i, n in enumerate(nodes) if n.name == last)
            picked = [n.name for n in nodes[: end + 1]]  # graph order is topological
        elif token == "first_conv" and convs:
            picked = [convs[0]]
        elif token == "last_conv" and convs:
            picked = [convs[-1]]
        elif token in by_op:
            picked = by_op[token]
        elif token in names:
            picked = [token]
        else:
            raise InvalidParameterError(
                f"keep_float: {token!r} is not 'first_conv', 'last_conv', 'first_convs:N' (N <= "
                f"{len(convs)}), an op type or a node "
                f"name of this graph (op types: {', '.join(sorted(by_op))})"
            )
        out.extend(p for p in picked if p not in out)
    return out


def quantize_static_int8(
    fp32_onnx_path: str | os.PathLike[str],
    int8_onnx_path: str | os.PathLike[str],
    calibration: Iterable[np.ndarray],
    *,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    per_channel: bool = True,
    reduce_range: bool = False,
    activation_type: str = "uint8",
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    preprocess: bool = True,
) -> QuantizationResult:
    """Quantise an fp32 ONNX graph to int8 (QDQ), calibrated on `calibration`.

    Weights are int8 (per output channel by default: one scale for a whole depthwise conv loses
    the small channels next to the large ones), activations uint8 with ranges from the
    calibration batches. The graph is first run through ONNX Runtime's quantisation pre-processing
    (constant folding, shape inference), as its docs advise. Written atomically.

    Args:
        fp32_onnx_path: the fp32 graph (one float32 NCHW input).
        int8_onnx_path: where the int8 graph goes.
        calibration: NCHW float32 batches, preprocessed as the graph's input expects; the user's
            own training images (the ranges fit the images the features will come from).
        method: one of `CALIBRATION_METHODS`.
        percentile: the percentile of |activation| kept, for ``method="percentile"``.
        per_channel: per-channel weight scales.
        reduce_range: 7-bit weights, for CPUs without VNNI (u8 x s8 saturation on AVX2).
        activation_type: ``"uint8"`` (ONNX Runtime's fast CPU path) or ``"int8"``.
        keep_float: nodes left in float (tokens of `resolve_keep_float`).
        preprocess: run `quant_pre_process` first.

    Raises:
        InvalidParameterError: a bad option, or calibration batches that hold no image.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "distribution": CalibrationMethod.Distribution,
    }
    if method not in methods:
        raise InvalidParameterError(
            f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    act_types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activation_type not in act_types:
        raise InvalidParameterError(
            f"activation_type must be 'uint8' or 'int8', got {activation_type!r}"
        )
    if not 0.0 < percentile <= 100.0:
        raise InvalidParameterError(f"percentile must be in (0, 100], got {percentile!r}")
    t0 = time.perf_counter()
    fp32_path, out_path = os.fspath(fp32_onnx_path), os.fspath(int8_onnx_path)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".quant-") as tmp:
        src = fp32_path
        if preprocess:
            src = os.path.join(tmp, "pre.onnx")
            quant_pre_process(fp32_path, src, skip_symbolic_shape=False)
        model = onnx.load(src)
        input_name = model.graph.input[0].name
        excluded = resolve_keep_float(model, keep_float)
        reader = _BatchReader(input_name, calibration)
        if reader.images == 0:
            raise InvalidParameterError("calibration gave no images: pass at least one batch")
        extra: dict[str, Any] = {"CalibStridedMinMax": 1}  # one batch at a time (any method)
        if method == "percentile":
            extra["CalibPercentile"] = float(percentile)
        tmp_out = os.path.join(tmp, "int8.onnx")
        quantize_static(
            src,
            tmp_out,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=act_types[activation_type],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[method],
            extra_options=extra,
        )
        q = onnx.load(tmp_out)
        dq_consumers = _dequantized_consumers(q)
        os.replace(tmp_out, out_path)
    return QuantizationResult(
        int8_path=out_path,
        fp32_path=fp32_path,
        method=method,
        percentile=float(percentile) if method == "percentile" else None,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=activation_type,
        calibration_images=reader.images,
        kept_float=tuple(excluded),
        quantized_nodes=dq_consumers,
        seconds=time.perf_counter() - t0,
        onnxruntime_version=ort.__version__,
    )


def _dequantized_consumers(model: Any) -> int:
    """How many compute nodes read a DequantizeLinear output (i.e. run on int8 inputs)."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    skip = {"QuantizeLinear", "DequantizeLinear"}
    return sum(
        1 for n in model.graph.node if n.op_type not in skip and any(i in dq_out for i in n.input)
    )


def _session(model: Any, threads: int | None) -> Any:
    import onnxruntime as ort

    if isinstance(model, ort.InferenceSession):
        return model
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(os.fspath(model), opts, providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    out = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return out


def measure_fidelity(
    fp32: Any,
    int8: Any,
    batches: Iterable[np.ndarray],
    *,
    threads: int | None = None,
) -> FidelityReport:
    """Each output's cosine between the int8 and the fp32 graph, image by image.

    Args:
        fp32: the fp32 graph: a path or an `onnxruntime.InferenceSession`.
        int8: the int8 graph: a path or a session.
        batches: NCHW float32 batches, preprocessed (held-out images: not the calibration ones).
        threads: intra-op threads for sessions opened here (None: ONNX Runtime's default).

    Raises:
        InvalidParameterError: the two graphs' outputs differ, or no image was given.
    """
    s32, s8 = _session(fp32, threads), _session(int8, threads)
    names = [o.name for o in s32.get_outputs()]
    if names != [o.name for o in s8.get_outputs()]:
        raise InvalidParameterError(
            f"the fp32 and int8 graphs have different outputs: {names} vs "
            f"{[o.name for o in s8.get_outputs()]}"
        )
    input_name = s32.get_inputs()[0].name
    cos: dict[str, list[np.ndarray]] = {n: [] for n in names}
    err = dict.fromkeys(names, 0.0)
    n_images = 0
    for batch in batches:
        feed = {input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        a, b = s32.run(None, feed), s8.run(None, feed)
        for name, x, y in zip(names, a, b, strict=True):
            cos[name].append(_cosines(x, y))
            err[name] = max(err[name], float(np.abs(x - y).max()))
        n_images += int(feed[input_name].shape[0])
    if n_images == 0:
        raise InvalidParameterError("measure_fidelity needs at least one image")
    arrays = {n: np.concatenate(v) for n, v in cos.items()}
    return FidelityReport(
        images=n_images,
        mean_cosine={n: float(v.mean()) for n, v in arrays.items()},
        min_cosine={n: float(v.min()) for n, v in arrays.items()},
        max_abs_error=err,
        cosines=arrays,
    )
