"""Beyond one process on existing engines: Ray Data for extraction, torchrun/DDP for fine-tuning.

Both engines are optional at run time; importing this package imports neither Ray nor starts
a process group.
"""

from transferlab.distributed._ddp import (
    ShardSampler,
    distributed_session,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    launch_finetune,
    launched_by_torchrun,
)
from transferlab.distributed._ray import (
    ListedImage,
    RayExtractionResult,
    extract_with_ray,
    is_ray_available,
    list_sources,
    load_shards,
)

__all__ = [
    "ListedImage",
    "RayExtractionResult",
    "ShardSampler",
    "distributed_session",
    "extract_with_ray",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_main_process",
    "is_ray_available",
    "launch_finetune",
    "launched_by_torchrun",
    "list_sources",
    "load_shards",
]
