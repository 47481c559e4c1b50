"""transferlab: transfer learning on images, with an honest account of why it works or fails.

The public API is re-exported here from one list of names (`_LAZY`); heavy modules (torch, timm)
load only when a name is first used (PEP 562), so `import transferlab` and the CLI's `--help`
stay quick.
"""

from __future__ import annotations

from typing import Any

from transferlab._version import __version__

# name -> the module that defines it: the one list of public names.
_LAZY = {
    # errors
    "TransferlabError": "transferlab.exceptions",
    # data
    "load_image": "transferlab.data",
    "load_dataset": "transferlab.data",
    "Dataset": "transferlab.data",
    "Sample": "transferlab.data",
    # backbones
    "BackboneSpec": "transferlab.backbones",
    "list_backbones": "transferlab.backbones",
    "get_backbone_spec": "transferlab.backbones",
    "load_backbone": "transferlab.backbones",
    "register_backbone": "transferlab.backbones",
    # features, probes, evaluation
    "FeatureExtractor": "transferlab.features",
    "FeatureCache": "transferlab.features",
    "LinearProbe": "transferlab.probe",
    "MultiLabelProbe": "transferlab.probe",
    "evaluate_predictions": "transferlab.evaluate",
    "EvalReport": "transferlab.evaluate",
    # fine-tuning
    "FineTuner": "transferlab.finetune",
    "FinetuneConfig": "transferlab.finetune",
    "Callback": "transferlab.finetune",
    # saved models
    "TransferModel": "transferlab.models",
    "FinetunedModel": "transferlab.models",
    "load_model": "transferlab.models",
    "export_onnx": "transferlab.models",
    # runs: run_<verb>(config) -> RunResult
    "RunResult": "transferlab.pipeline",
    "run_fit": "transferlab.pipeline",
    "FitConfig": "transferlab.pipeline",
    "run_finetune": "transferlab.pipeline",
    "FinetuneRunConfig": "transferlab.pipeline",
    "run_evaluate": "transferlab.pipeline",
    "EvaluateConfig": "transferlab.pipeline",
    "run_curve": "transferlab.pipeline",
    "CurveConfig": "transferlab.pipeline",
    "run_embed": "transferlab.pipeline",
    "EmbedConfig": "transferlab.pipeline",
    "run_diagnose": "transferlab.pipeline",
    "DiagnoseConfig": "transferlab.pipeline",
    "run_rank": "transferlab.pipeline",
    "RankConfig": "transferlab.pipeline",
    "run_adapt_bn": "transferlab.pipeline",
    "AdaptBNConfig": "transferlab.pipeline",
    "run_auto": "transferlab.pipeline",
    "AutoConfig": "transferlab.pipeline",
}
# old names that still resolve (each warns once), kept out of __all__ and dir()
_DEPRECATED = {"fit": "transferlab.pipeline", "FitResult": "transferlab.pipeline"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
