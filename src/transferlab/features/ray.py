"""Feature extraction on a Ray cluster: a Ray Data pipeline writing resumable Parquet shards.

The listing (a folder, a CSV or Parquet listing, or an fsspec URL) is sorted by path and cut into
fixed slices; shard ``i`` is always the same images, so a shard is the unit of work, of retry and of
resume. The pipeline is::

    shards --map_batches(_decode_shard, CPU tasks)--> preprocessed tensors
           --map_batches(_Embedder, actor pool: one model per actor, GPU actors when the
             cluster has GPUs)--> vectors --driver--> part-NNNNN.parquet (tmp file + rename)

Decoding reuses `ImageFileDataset` and `file_digest`, and each actor builds one `FeatureExtractor`
and runs its backbone the way `FeatureExtractor.extract` does, so the vectors are the single-process
ones. The driver writes each shard atomically when its result arrives: an actor that dies has its
shard retried (Ray restarts the actor and resubmits the call), and a shard is either absent or
whole, never written twice with different rows. A re-run skips shards whose file is there and whose
recorded listing digest matches; ``_transferlab.json`` records what the folder holds (model, layer,
listing) so a re-run with other settings is refused instead of mixing vectors.

Ray is an optional dependency (``pip install 'transferlab[ray]'``); it is imported only when an
extraction starts.
"""

from __future__ import annotations

from transferlab.features._ray_listing import ListedImage as ListedImage
from transferlab.features._ray_listing import _localize as _localize
from transferlab.features._ray_listing import list_sources as list_sources
from transferlab.features._ray_run import RAY_INSTALL_HINT as RAY_INSTALL_HINT
from transferlab.features._ray_run import RayExtractionResult as RayExtractionResult
from transferlab.features._ray_run import extract_with_ray as extract_with_ray
from transferlab.features._ray_run import is_ray_available as is_ray_available
from transferlab.features._ray_shards import MANIFEST_NAME as MANIFEST_NAME
from transferlab.features._ray_shards import SHARD_FORMAT as SHARD_FORMAT
from transferlab.features._ray_shards import SHARD_GLOB as SHARD_GLOB
from transferlab.features._ray_shards import _prepare_out_dir as _prepare_out_dir
from transferlab.features._ray_shards import _shard_meta as _shard_meta
from transferlab.features._ray_shards import _shard_path as _shard_path
from transferlab.features._ray_shards import _write_json as _write_json
from transferlab.features._ray_shards import _write_shard as _write_shard
from transferlab.features._ray_shards import load_shards as load_shards
from transferlab.features._ray_stages import CRASH_ENV as CRASH_ENV

__all__ = [
    "CRASH_ENV",
    "ListedImage",
    "RayExtractionResult",
    "extract_with_ray",
    "is_ray_available",
    "list_sources",
    "load_shards",
]
