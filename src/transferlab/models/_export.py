"""Export a saved model to ONNX: one graph from normalised image tensor to class probabilities.

Beside ``model.onnx`` goes ``preprocessing.json``: what a caller must do to a picture first
(resize, centre crop, scale to [0, 1], normalise with mean/std, NCHW float32) and the class names.
Fine-tuned networks export whole. Linear-probe models export as backbone-to-layer + the probe
(standardisation and linear map folded in, or centroid distances), for the ``pre_logits`` and
``logits`` layers.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab._internal.json import write_json
from transferlab.backbones._static_pad import simplify_onnx, static_padding
from transferlab.exceptions import InvalidParameterError
from transferlab.models._finetuned import FinetunedModel
from transferlab.models._transfer import TransferModel

__all__ = ["EXPORT_FORMATS", "export_onnx"]

EXPORT_FORMATS = ("onnx",)


class _Probs(nn.Module):
    """Fine-tuned network + calibrated softmax (or per-label sigmoid for multi-label)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, sigmoid: bool = False) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        if self.sigmoid:
            return torch.sigmoid(z)
        return (z / self.temperature).softmax(-1)


class _ProbeHead(nn.Module):
    """Backbone to `layer`, then the fitted LinearProbe as tensor ops."""

    def __init__(self, model: nn.Module, layer: str, probe: Any) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        pipe = probe.pipeline_
        scaler = pipe.named_steps.get("scale")
        self.l2 = "l2" in pipe.named_steps  # few-shot probes scale each vector to unit length
        mean = scaler.mean_ if scaler is not None else np.zeros(probe.n_features_in_)
        scale = scaler.scale_ if scaler is not None else np.ones(probe.n_features_in_)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.kind = probe.classifier
        self.calibration = 1.0  # the model's temperature scaling, set by export_onnx
        clf = pipe[-1]
        if hasattr(clf, "best_estimator_"):
            clf = clf.best_estimator_
        if self.kind == "centroid":
            self.register_buffer("centroids", torch.as_tensor(clf.centroids_, dtype=torch.float32))
            self.temperature = float(probe.temperature_)
        else:
            coef = np.atleast_2d(clf.coef_)
            bias = np.atleast_1d(clf.intercept_)
            if coef.shape[0] == 1:  # binary: scores (-z, z) for svm margins, (0, z) for logreg
                coef = (
                    np.vstack([-coef, coef])
                    if self.kind == "svm"
                    else np.vstack([np.zeros_like(coef), coef])
                )
                bias = (
                    np.array([-bias[0], bias[0]])
                    if self.kind == "svm"
                    else np.array([0.0, bias[0]])
                )
            self.register_buffer("weight", torch.as_tensor(coef, dtype=torch.float32))
            self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
            self.temperature = (
                float(getattr(probe, "temperature_", 1.0)) if self.kind == "svm" else 1.0
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if self.layer == "pre_logits":
            f = self.model.forward_head(feats, pre_logits=True)
        else:
            f = self.model.forward_head(feats)
        if self.l2:
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        z = (f - self.mean) / self.scale
        if self.kind == "centroid":
            d = (
                (z * z).sum(1, keepdim=True)
                - 2 * z @ self.centroids.T
                + (self.centroids**2).sum(1)[None, :]
            )
            scores = -d / z.shape[1]
        else:
            scores = z @ self.weight.T + self.bias
        # softmax(log p / T) of the calibrated model equals softmax(scores / (t_probe * T))
        return (scores / (self.temperature * self.calibration)).softmax(-1)


def export_onnx(
    model: TransferModel | FinetunedModel,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = 17,
    check: bool = True,
    quantize: str | None = None,
    calibration: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx`` and ``preprocessing.json`` to `out_dir`; returns what was written.

    With `check`, runs the ONNX model in onnxruntime on random input and records the largest
    absolute difference to PyTorch's probabilities (``max_abs_diff``). With ``quantize="int8"``
    also writes ``model-int8.onnx``: static quantisation calibrated on `calibration` (the
    user's training images; default: those a probe model recorded), its fidelity measured on
    images held out of the calibration (probability cosine and top-1 agreement with fp32) and
    stored in preprocessing.json (``int8``).

    Raises:
        InvalidParameterError: a probe on a layer other than pre_logits/logits, or onnx missing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, FinetunedModel):
        bb = model.backbone
        module: nn.Module = _Probs(bb.model, model.temperature, sigmoid=model.multi_label)
        size = model.image_size
        pre = {**bb.preprocessing(), "input_size": [3, size, size]}
        classes = model.classes
    else:
        layer = model.extractor.layer
        if layer not in ("pre_logits", "logits"):
            raise InvalidParameterError(
                f"ONNX export of a probe on layer {layer!r} is not supported yet; fit the probe on "
                "pre_logits or logits (the default) to export it"
            )
        bb = model.extractor.backbone_
        if model.multi_label:
            raise InvalidParameterError(
                "ONNX export of multi-label probe models is not supported yet; fine-tuned multi-label "
                "models export (transferlab finetune --multi-label)"
            )
        probe = model.probe
        if getattr(probe, "method", None) == "coral":
            raise InvalidParameterError(
                "ONNX export of a CORAL-adapted probe (fit --remedy coral) is not supported yet: "
                "its router sends each image to one of two alignments; the style and self-train "
                "remedies export (their probes are linear)"
            )
        probe = getattr(probe, "probe_", probe)  # self-train: the refitted linear probe
        module = _ProbeHead(bb.model, layer, probe)
        module.calibration = float(model.temperature)
        pre = bb.preprocessing()
        size = int(pre["input_size"][-1])
        classes = model.classes
    module = module.to("cpu").eval().to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 3, size, size)
    path = out / "model.onnx"
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as exc:
        raise InvalidParameterError(
            "ONNX export needs the onnx package: pip install 'transferlab[onnx]'"
        ) from exc
    if quantize not in (None, "int8"):
        raise InvalidParameterError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and not calibration:
        calibration = (getattr(model, "train_index", None) or {}).get("paths")
        if not calibration:
            raise InvalidParameterError(
                "int8 export calibrates on your training images: pass --calibration DATA (a "
                "folder of them; its train split is used)"
            )
    # TF-"same" padding as constants: no padding arithmetic in the graph (issue 17)
    with warnings.catch_warnings(), static_padding(bb.model, (3, size, size)):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=opset,
        )
    simplify_onnx(path)
    crop_pct = float(pre.get("crop_pct", 0.875))
    spec = {
        "model": "model.onnx",
        "input": {
            "name": "image",
            "layout": "NCHW",
            "dtype": "float32",
            "shape": ["batch", 3, size, size],
        },
        "output": {"name": "probabilities", "shape": ["batch", len(classes)], "classes": classes},
        "preprocessing": {
            "convert": "RGB",
            "resize_shorter_side": math.floor(size / crop_pct),
            "interpolation": pre.get("interpolation", "bilinear"),
            "center_crop": [size, size],
            "scale": "divide by 255 to [0, 1]",
            "mean": pre.get("mean"),
            "std": pre.get("std"),
        },
        "source": {
            "kind": "finetuned" if isinstance(model, FinetunedModel) else "linear_probe",
            "backbone": bb.name,
        },
    }
    result: dict[str, Any] = {"onnx": str(path), "preprocessing": str(out / "preprocessing.json")}
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            spec["check"] = "skipped: onnxruntime not installed"
        else:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"image": x.numpy()})[0]
            with torch.inference_mode():
                ref = module(x).numpy()
            diff = float(np.abs(got - ref).max())
            spec["check"] = {"max_abs_diff_vs_pytorch": diff, "onnxruntime": ort.__version__}
            result["max_abs_diff"] = diff
    if quantize:
        spec["int8"] = result["int8"] = _quantize_export(
            path, out / "model-int8.onnx", bb, pre, size, calibration
        )
        result["onnx_int8"] = str(out / "model-int8.onnx")
    write_json(out / "preprocessing.json", spec)
    bb.model.to(memory_format=torch.channels_last)
    return result


def _quantize_export(
    fp32: Path, int8: Path, bb: Any, pre: dict[str, Any], size: int, images: Sequence[str]
) -> dict[str, Any]:
    """Quantise the exported model as the feature engine quantises its exports (same
    calibration split, preprocessing and float-kept layers); its fidelity on held-out images
    and top-1 agreement with fp32, for preprocessing.json."""
    import onnxruntime as ort

    from transferlab.features._ort_engine import keep_float_for, quantize_on_images

    q = quantize_on_images(
        fp32,
        int8,
        {**pre, "input_size": [3, size, size]},
        images,
        keep_float=keep_float_for(bb.card(), str(fp32)),
        max_pixels=None,
    )
    s32 = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    same = [
        s32.run(None, {"image": x})[0].argmax(1) == s8.run(None, {"image": x})[0].argmax(1)
        for x in q.held_out
    ]
    return {
        "model": int8.name,
        "calibration_images": q.result.calibration_images,
        "method": q.result.method,
        "kept_float_nodes": len(q.result.kept_float),
        "fidelity_images": q.fidelity.images,
        "fidelity_measured_on": q.measured_on,
        "probability_cosine_to_fp32": q.fidelity.mean_cosine["probabilities"],
        "top1_agreement_with_fp32": float(np.concatenate(same).mean()),
    }
