"""Accepted values of options whose owners import heavy libraries (scikit-learn, torch): run
configs check their flags against these before anything heavy loads, so a warm run that needs
no model and no probe fit imports neither (issue 17). The owners re-export them."""

from __future__ import annotations

__all__ = ["CLASSIFIERS", "FEATURE_ENGINES", "FEATURE_PRECISIONS", "TORCH_PRECISIONS"]

#: `LinearProbe(classifier=...)`
CLASSIFIERS = ("logreg", "svm", "centroid")
#: `backbones.use_bf16` / fine-tuning precisions: ``"auto"`` picks per device
TORCH_PRECISIONS = ("auto", "fp32", "bf16")
#: `FeatureExtractor(engine=...)`
FEATURE_ENGINES = ("auto", "torch", "onnx")
#: `FeatureExtractor(precision=...)`: ``int8`` is the ONNX export statically quantised (CPU)
FEATURE_PRECISIONS = (*TORCH_PRECISIONS, "int8")
