"""`OrtEngine`: the part of `FeatureExtractor` that picks, makes and keeps its ONNX Runtime
sessions (fp32 export, int8 quantisation), with no torch import until an export is made."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from transferlab.backbones._card import BackboneCard
from transferlab.backbones._ort import OrtTaps, onnx_path
from transferlab.exceptions import InvalidParameterError

if TYPE_CHECKING:
    from pathlib import Path

    from transferlab.backbones import Backbone

__all__ = ["ONNX_AUTO_MIN_IMAGES", "OrtEngine"]

logger = logging.getLogger("transferlab.features")

#: With ``engine="auto"`` on CPU, a run exports the backbone to ONNX only when it has at least this
#: many images to compute (or an export is already there): exporting lite0 and loading the
#: session costs a few seconds, what PyTorch spends on about this many images here.
ONNX_AUTO_MIN_IMAGES = 64


class OrtEngine:
    """Mixed into `FeatureExtractor`: its ONNX Runtime sessions, one per (weights, layers, pool,
    precision), made on first need and kept."""

    engine: str
    pool: str
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
        for (_, lays, _, prec), runner in self.__dict__.get("_onnx_runners", {}).items():
            if prec == "int8" and layer in lays:
                with open(runner.path, "rb") as fh:
                    return hashlib.sha256(fh.read()).hexdigest()[:24]
        raise InvalidParameterError("the int8 export is made on the first extraction")

    def _int8_export(
        self,
        card: BackboneCard,
        layers: list[str],
        fp32_path: str,
        calibrate_on: Sequence[str] | None,
    ) -> str:
        raise InvalidParameterError("precision='int8' is not available yet")
