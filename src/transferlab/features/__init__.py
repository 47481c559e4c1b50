"""Images -> feature vectors from any backbone layer (DeCAF style), batched and cached on disk.

`FeatureExtractor` (`_extractor.py`) computes them, `FeatureCache` (`_cache.py`) keeps them by
image content and model, `save_features`/`load_features` (`_io.py`) write and read feature
files, and `transferlab.features.ray` runs the extraction on a Ray cluster.
"""

from __future__ import annotations

from transferlab._internal.lazy import lazy_namespace

# name -> the private module that defines it (imported on first use: see _internal.lazy)
_NAMES = {
    "FeatureCache": "_cache",
    "default_cache_dir": "_cache",
    "cache_setting": "_cache",
    "file_digest": "_cache",
    "ENGINES": "_extractor",
    "FEATURE_FORMAT": "_cache",
    "ONNX_AUTO_MIN_IMAGES": "_extractor",
    "PRECISIONS": "_extractor",
    "ExtractionResult": "_extractor",
    "FeatureExtractor": "_extractor",
    "default_num_workers": "_extractor",
    "load_features": "_io",
    "save_features": "_io",
    # they live in transferlab.data now; still importable from here
    "ImageFileDataset": "transferlab.data",
    "collate_skipping_failures": "transferlab.data",
}

__all__ = [
    "ExtractionResult",
    "FeatureCache",
    "FeatureExtractor",
    "ImageFileDataset",
    "cache_setting",
    "collate_skipping_failures",
    "default_cache_dir",
    "default_num_workers",
    "file_digest",
    "load_features",
    "save_features",
]

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES)
