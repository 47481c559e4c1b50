"""Beyond one process: torchrun/DDP helpers for fine-tuning (collectives, shard sampler, model
wrapping). A leaf: it imports no layer above `backbones`, and importing it starts no process group.
The launcher for ``--nproc`` is a run (`transferlab.pipeline`); Ray extraction lives in
`transferlab.features.ray` (its names here are deprecated aliases).
"""

from transferlab._internal.deprecation import warn_once
from transferlab.distributed.ddp import (
    ShardSampler,
    distributed_session,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    launched_by_torchrun,
)

__all__ = [
    "ShardSampler",
    "distributed_session",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
]

_MOVED = {
    "ListedImage": "transferlab.features.ray",
    "RayExtractionResult": "transferlab.features.ray",
    "extract_with_ray": "transferlab.features.ray",
    "is_ray_available": "transferlab.features.ray",
    "list_sources": "transferlab.features.ray",
    "load_shards": "transferlab.features.ray",
    "launch_finetune": "transferlab.pipeline",
}


def __getattr__(name: str) -> object:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlab.distributed' has no attribute {name!r}")
    import importlib

    warn_once(f"transferlab.distributed.{name}", f"{module}.{name}")
    return getattr(importlib.import_module(module), name)
