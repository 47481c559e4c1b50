"""Images -> feature vectors from any backbone layer (DeCAF style), batched and cached on disk.

`FeatureExtractor` (`_extractor.py`) computes them, `FeatureCache` (`_cache.py`) keeps them by
image content and model, `save_features`/`load_features` (`_io.py`) write and read feature
files, and `transferlab.features.ray` runs the extraction on a Ray cluster.
"""

from __future__ import annotations

# `ImageFileDataset` and `collate_skipping_failures` live in `transferlab.data` now; the names
# stay importable from here until every caller imports them from there.
from transferlab.data import ImageFileDataset as ImageFileDataset
from transferlab.data import collate_skipping_failures as collate_skipping_failures
from transferlab.features._cache import FeatureCache as FeatureCache
from transferlab.features._cache import default_cache_dir as default_cache_dir
from transferlab.features._cache import file_digest as file_digest
from transferlab.features._extractor import ENGINES as ENGINES
from transferlab.features._extractor import FEATURE_FORMAT as FEATURE_FORMAT
from transferlab.features._extractor import ONNX_AUTO_MIN_IMAGES as ONNX_AUTO_MIN_IMAGES
from transferlab.features._extractor import PRECISIONS as PRECISIONS
from transferlab.features._extractor import ExtractionResult as ExtractionResult
from transferlab.features._extractor import FeatureExtractor as FeatureExtractor
from transferlab.features._extractor import default_num_workers as default_num_workers
from transferlab.features._io import load_features as load_features
from transferlab.features._io import save_features as save_features

__all__ = [
    "ExtractionResult",
    "FeatureCache",
    "FeatureExtractor",
    "ImageFileDataset",
    "collate_skipping_failures",
    "default_cache_dir",
    "default_num_workers",
    "file_digest",
    "load_features",
    "save_features",
]
