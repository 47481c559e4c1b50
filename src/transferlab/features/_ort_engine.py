"""`OrtEngine`: the part of `FeatureExtractor` that picks, makes and keeps its ONNX Runtime
sessions (fp32 export, int8 quantisation), with no torch import until an export is made."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.backbones._card import BackboneCard
from transferlab.backbones._ort import OrtTaps, onnx_path
from transferlab.exceptions import InvalidParameterError

if TYPE_CHECKING:
    from pathlib import Path

    from transferlab.backbones import Backbone
    from transferlab.backbones._quantize import FidelityReport, QuantizationResult

__all__ = ["ONNX_AUTO_MIN_IMAGES", "OrtEngine"]

logger = logging.getLogger("transferlab.features")

#: With ``engine="auto"`` on CPU, a run exports the backbone to ONNX only when it has at least this
#: many images to compute (or an export is already there): exporting lite0 and loading the
#: session costs a few seconds, what PyTorch spends on about this many images here.
ONNX_AUTO_MIN_IMAGES = 64
#: int8 calibration: images the activation ranges come from, and images held out to measure
#: the fidelity on (benchmarks/RESULTS.md, issue 17: chosen on training/validation images).
INT8_CALIBRATION_IMAGES = 128
INT8_CHECK_IMAGES = 64
#: Below this mean feature cosine to fp32 an int8 export is reported with a warning.
INT8_MIN_COSINE = 0.98


class OrtEngine:
    """Mixed into `FeatureExtractor`: its ONNX Runtime sessions, one per (weights, layers, pool,
    precision), made on first need and kept."""

    engine: str
    pool: str
    calibration: Sequence[str] | None
    int8_model: str | None
    max_pixels: int | None
    backbone_: Backbone

    def _card(self) -> BackboneCard: ...  # provided by FeatureExtractor
    def _precision(self) -> str: ...
    def _device_type(self) -> str: ...
    def _folder(self) -> Path: ...

    # -- ONNX Runtime --------------------------------------------------------------------------
    def _ort_runner(
        self, layers: list[str], n_todo: int, *, calibrate_on: Sequence[str] | None = None
    ) -> OrtTaps | None:
        """The ONNX Runtime session this run should use, or None for PyTorch.

        One session per set of layers is kept: evaluate and predict call `extract` once per
        chunk, and loading a session each time would dominate. The export is made (with torch,
        once) only when it repays: ``engine="onnx"``, or ``"auto"`` with at least
        `ONNX_AUTO_MIN_IMAGES` images to compute; after that no run loads the model for it.
        """
        if self.engine == "torch":
            return None
        precision = self._precision()
        if precision == "bf16":
            if self.engine == "onnx":
                raise InvalidParameterError(
                    "engine='onnx' computes in fp32 or int8; precision='bf16' needs engine='torch'"
                )
            return None
        if self._device_type() != "cpu":
            if self.engine == "onnx":
                raise InvalidParameterError("engine='onnx' runs on CPU; use device='cpu'")
            return None  # auto on a GPU: PyTorch
        runners = self.__dict__.setdefault("_onnx_runners", {})
        failed = self.__dict__.setdefault("_onnx_failed", set())  # keys whose export failed
        card = self._card()
        key = (card.fingerprint(), tuple(layers), self.pool, precision)
        if key in runners:
            return runners[key]
        if importlib.util.find_spec("onnxruntime") is None:
            if self.engine == "onnx" or precision == "int8":
                raise InvalidParameterError(
                    "the ONNX engine needs onnxruntime, a dependency of transferlab: "
                    "pip install onnxruntime"
                )
            return None
        folder = self._folder() / "onnx"
        path = onnx_path(card, layers, self.pool, folder)
        if not os.path.isfile(path):
            auto = self.engine == "auto" and precision == "fp32"
            if auto and (n_todo < ONNX_AUTO_MIN_IMAGES or key in failed):
                return None
            from transferlab.backbones import OnnxTaps

            try:
                OnnxTaps(self.backbone_, layers, self.pool, folder)  # exports, with torch
            except Exception as exc:  # an architecture the exporter cannot trace
                if not auto:
                    raise InvalidParameterError(
                        f"could not export {card.name} to ONNX ({type(exc).__name__}: {exc}); "
                        "use engine='torch' (precision fp32 or bf16)"
                    ) from exc
                logger.warning(
                    "ONNX export of %s failed (%s: %s); computing features with PyTorch "
                    "instead (same vectors, slower). Pass --engine torch to skip the attempt.",
                    card.name,
                    type(exc).__name__,
                    exc,
                )
                failed.add(key)
                return None
        if precision == "int8":
            path = self._int8_export(card, layers, path, calibrate_on)
        runners[key] = OrtTaps(path, layers)
        return runners[key]

    def _int8_identity(self, layer: str) -> str:
        """sha256 of the int8 export serving `layer` (made by `extract` before it is asked)."""
        digests = self.__dict__.setdefault("_int8_digests", {})  # hashed once per export
        for (_, lays, _, prec), runner in self.__dict__.get("_onnx_runners", {}).items():
            if prec == "int8" and layer in lays:
                if runner.path not in digests:
                    with open(runner.path, "rb") as fh:
                        digests[runner.path] = hashlib.sha256(fh.read()).hexdigest()[:24]
                return digests[runner.path]
        raise InvalidParameterError("the int8 export is made on the first extraction")

    def _int8_export(
        self,
        card: BackboneCard,
        layers: list[str],
        fp32_path: str,
        calibrate_on: Sequence[str] | None,
    ) -> str:
        """The int8 export beside `fp32_path`: found, or made by static quantisation calibrated
        on the user's images, its fidelity to fp32 measured on images held out of the
        calibration and stored beside it (``<export>.json``, also in `quantization_`)."""
        folder = os.path.dirname(fp32_path)
        path = self.int8_model or onnx_path(card, layers, self.pool, folder, precision="int8")
        record = f"{path}.json"
        if self.int8_model and not os.path.isfile(path):
            raise InvalidParameterError(f"int8_model: no such file {path}")
        if os.path.isfile(path) and (self.int8_model or os.path.isfile(record)):
            if os.path.isfile(record):  # what was measured when it was made
                with open(record) as fh:
                    self.quantization_ = json.load(fh)
            return path
        images = list(self.calibration or calibrate_on or [])
        if not images:
            raise InvalidParameterError(
                "precision='int8' calibrates on your own images the first time: pass "
                "calibration=[training image paths] (or extract some images first)"
            )
        logger.info("quantising %s to int8 on your images", card.name)
        q = quantize_on_images(
            fp32_path,
            path,
            card.data_config,
            images,
            keep_float=keep_float_for(card, fp32_path),
            max_pixels=self.max_pixels,
        )
        result, fidelity = q.result, q.fidelity
        self.quantization_ = {
            "quantization": result.to_dict(),
            "fidelity": fidelity.to_dict(),
            "fidelity_images": q.measured_on,
            "calibration_images": result.calibration_images,
        }
        tmp = f"{record}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.quantization_, fh, indent=1)
        os.replace(tmp, record)
        worst = fidelity.worst_mean_cosine
        if worst < INT8_MIN_COSINE:
            logger.warning(
                "int8 features of %s keep a mean cosine of only %.3f to fp32 on %d images "
                "(target %.2f): use precision fp32 where accuracy matters",
                card.name,
                worst,
                fidelity.images,
                INT8_MIN_COSINE,
            )
        return path


@dataclass(frozen=True)
class ImageQuantization:
    """What `quantize_on_images` did: the quantiser's result, the fidelity it measured, the
    preprocessed images it measured on (for further checks), and which images those were."""

    result: QuantizationResult
    fidelity: FidelityReport
    held_out: list[np.ndarray]
    measured_on: str


def quantize_on_images(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    data_config: Mapping[str, Any],
    images: Sequence[str],
    *,
    keep_float: Sequence[str],
    max_pixels: int | None,
) -> ImageQuantization:
    """Quantise `fp32_path` into `int8_path`, calibrated on `images` (the user's own) preprocessed
    as `data_config` says, and measure the fidelity on images held out of the calibration (see
    `split_calibration`): the one way the feature engine and `export --quantize` do it."""
    from transferlab.backbones._quantize import measure_fidelity, quantize_static_int8
    from transferlab.data._preprocess import NumpyEvalTransform
    from transferlab.features._decode import decoded_batches

    calib, check = split_calibration(images)
    transform = NumpyEvalTransform(data_config)

    def batches(paths: list[str]) -> Iterator[np.ndarray]:
        for _, x, _ in decoded_batches(
            paths, transform, batch_size=32, max_pixels=max_pixels, threads=1
        ):
            if x is not None:  # broken files are reported by the extraction itself
                yield x

    with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
        result = quantize_static_int8(fp32_path, int8_path, batches(calib), keep_float=keep_float)
    held = list(batches(check))
    fidelity = measure_fidelity(os.fspath(fp32_path), os.fspath(int8_path), held)
    on = "held out of the calibration" if check is not calib else "the calibration images"
    return ImageQuantization(result, fidelity, held, on)


def keep_float_for(card: BackboneCard, fp32_path: str) -> tuple[str, ...]:
    """Nodes to keep in float: every node through the backbone's second stage (for lite0 the
    stem and blocks 0-1, at 112 and 56 px), where the int8 error was measured to be born; the
    quantiser's default where the graph does not name its stages."""
    import onnx

    from transferlab.backbones._quantize import DEFAULT_KEEP_FLOAT

    taps = {t.name: t.module for t in card.tap_info()}
    if "stage2" not in taps:
        return DEFAULT_KEEP_FLOAT
    stage = taps["stage2"]  # e.g. "blocks.1": node names read "/blocks/blocks.1/..."
    convs = [
        n.name
        for n in onnx.load(fp32_path, load_external_data=False).graph.node
        if n.op_type == "Conv"
    ]
    inside = [i for i, name in enumerate(convs) if f"/{stage}/" in name]
    if not inside:
        return DEFAULT_KEEP_FLOAT
    return (f"first_convs:{inside[-1] + 1}",)


def split_calibration(images: Sequence[str]) -> tuple[list[str], list[str]]:
    """Images to calibrate on (up to `INT8_CALIBRATION_IMAGES`, spread over the list) and images
    held out to measure fidelity on (up to `INT8_CHECK_IMAGES` others; with too few images for
    both, the calibration images themselves, which the record then says)."""
    images = list(dict.fromkeys(os.fspath(p) for p in images))
    step = max(1, len(images) // INT8_CALIBRATION_IMAGES)
    calib = images[::step][:INT8_CALIBRATION_IMAGES]
    chosen = set(calib)
    rest = [p for p in images if p not in chosen]
    check = rest[:: max(1, len(rest) // INT8_CHECK_IMAGES)][:INT8_CHECK_IMAGES] if rest else calib
    return calib, check
