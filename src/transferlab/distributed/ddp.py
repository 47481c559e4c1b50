"""Data-parallel fine-tuning (PyTorch DDP) under torchrun: one process per GPU, or CPU processes.

Two ways in, both ending in the same `FineTuner.fit`:

* ``torchrun --nproc_per_node N -m transferlab finetune DATA --out DIR ...`` (any torchrun setup,
  multi-node included): torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
  ``MASTER_PORT``; the ``finetune`` command sees them and runs inside `distributed_session`;
* ``transferlab finetune DATA --out DIR --nproc N``: this machine only; the command checks its
  input, then starts torchrun's agent in-process (`transferlab.pipeline.launch_finetune`).

What `FineTuner` does differently when a process group is up (its hooks call the helpers below):

* every rank decodes all images and starts from the same seed, so all build the same head;
* training batches come from `ShardSampler`: the single-process shuffle (same generator, reseeded
  every epoch) dealt round-robin to the ranks, so the ranks' batches of step k together are the
  single-process batch k at ``batch_size x world_size`` — the global batch;
* the model is wrapped in `DistributedDataParallel` per phase (gradients averaged over ranks;
  BatchNorm converted to `SyncBatchNorm` when its statistics train on CUDA);
* validation and embedding run on disjoint, unpadded shards whose outputs are gathered in order,
  so every rank computes the same metrics from the same numbers (model selection, early stopping
  and WiSE agree without further messages); training loss sums are all-reduced;
* only rank 0 writes checkpoints, metrics, plots and the model, and shows progress; checkpoints
  are read by rank 0 and sent to the others, so the run directory need not be shared.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from transferlab.exceptions import DistributedError, InvalidParameterError

__all__ = [  # what the layers above call (finetune's loop, the runs, the CLI)
    "ShardSampler",
    "all_reduce_sums",
    "barrier",
    "destroy_distributed",
    "distributed_session",
    "gather_batches",
    "gather_shards",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "on_main",
    "rank_device",
    "run_info",
    "seed_offset",
    "shard_loader",
    "to_device",
    "wrap_model",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: the environment torchrun gives each worker (MASTER_ADDR/PORT are read by ``init_method="env://"``)
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_RANK_SEED_STRIDE = 1_000_003  # per-rank offset of augmentation / dropout seeds


# ---------------------------------------------------------------------------------------------
# where am I
# ---------------------------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True in a worker started by torchrun (or anything setting its ``RANK``/``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    """A process group with more than one process is up in this process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files and shows progress."""
    return get_rank() == 0


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


# ---------------------------------------------------------------------------------------------
# process group
# ---------------------------------------------------------------------------------------------


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(
            f"environment variable {name} must be an integer (torchrun sets it), got {value!r}"
        ) from None


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> str | None:
    """Join the process group torchrun describes in the environment; returns the backend.

    NCCL when `device` resolves to CUDA (each process takes the GPU of its ``LOCAL_RANK``), else
    gloo. Nothing happens (None) outside torchrun or with ``WORLD_SIZE=1``.

    Raises:
        DistributedError: the environment is incomplete or the rendezvous fails.
        InvalidParameterError: more processes on this node than visible GPUs, or ``cuda:N``.
    """
    from transferlab.backbones import resolve_device

    if not launched_by_torchrun() or _env_int("WORLD_SIZE") <= 1:
        return None
    if torch.distributed.is_initialized():
        return str(torch.distributed.get_backend())
    if not torch.distributed.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed; install one that has")
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise DistributedError(
            f"RANK and WORLD_SIZE are set but {', '.join(missing)} not: start the processes with "
            "torchrun (e.g. torchrun --nproc_per_node 2 -m transferlab finetune DATA --out DIR)"
        )
    dev = resolve_device(device)
    local_rank, rank, world = _local_rank(), _env_int("RANK"), _env_int("WORLD_SIZE")
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        if dev.index is not None:
            raise InvalidParameterError(
                f"device={device!r}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                "pass 'cuda' or 'auto' (restrict GPUs with CUDA_VISIBLE_DEVICES)"
            )
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise InvalidParameterError(
                f"process with LOCAL_RANK {local_rank} has no GPU: {n_gpus} visible on this node; "
                f"start at most {n_gpus} processes per node (--nproc_per_node), or use --device cpu"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
        kwargs["device_id"] = torch.device("cuda", local_rank)
    else:
        backend = "gloo"
    try:
        torch.distributed.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"could not join the process group (rank {rank} of {world}, backend {backend}, "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {exc}"
        ) from exc
    logger.info("rank %d/%d joined (%s, local rank %d)", rank, world, backend, local_rank)
    return backend


def destroy_distributed() -> None:
    """Leave the process group, if one is up."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "auto", timeout_s: float = 1800.0) -> Iterator[str | None]:
    """Run the block in torchrun's process group (a no-op outside torchrun); yields the backend.

    Example:
        >>> with distributed_session() as backend:  # outside torchrun: nothing to join
        ...     backend, is_main_process()
        (None, True)
    """
    backend = init_distributed(device, timeout_s)
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        # CPU processes share the cores (torchrun itself sets OMP_NUM_THREADS=1)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", get_world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    try:
        yield backend
    finally:
        if backend is not None:
            destroy_distributed()


# ---------------------------------------------------------------------------------------------
# collectives (each one a no-op when not distributed)
# ---------------------------------------------------------------------------------------------


def _pickle_safe(exc: BaseException) -> BaseException:
    try:
        import pickle

        pickle.loads(pickle.dumps(exc))
    except Exception:
        return DistributedError(f"rank 0 failed: {type(exc).__name__}: {exc}")
    return exc


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result (or its exception) to every rank.

    Keeps ranks in step around file-system work (checking and creating the run directory,
    reading checkpoints): without it, one rank failing alone would leave the others waiting.
    Any exception counts, not only `TransferlabError`: a `PermissionError` creating the run
    directory or a damaged checkpoint must end every rank too, not leave the others in the
    broadcast until the process-group timeout (torchrun's agent would end them, other launchers
    need not). Rank 0 raises its own exception, with its traceback.
    """
    if not is_distributed():
        return fn()
    box: list[Any] = [None]
    error: Exception | None = None
    if is_main_process():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:
            error = exc
            box[0] = ("error", _pickle_safe(exc))
    torch.distributed.broadcast_object_list(box, src=0)
    status, value = box[0]
    if error is not None:
        raise error
    if status == "error":
        raise value
    return value  # type: ignore[no-any-return]


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def all_reduce_sums(values: Sequence[float], device: torch.device | str) -> list[float]:
    """Sum each value over ranks (in float64); the values themselves when not distributed."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()  # type: ignore[no-any-return]


def gather_shards(part: np.ndarray | None) -> np.ndarray:
    """Reassemble an array computed on `ShardSampler` shards (rank r holds rows r, r+W, ...).

    A rank whose shard is empty (fewer rows than processes) passes None; the row shape comes
    from the ranks that have rows.
    """
    if not is_distributed():
        if part is None:
            raise ValueError("gather_shards: no rows")
        return part
    parts: list[Any] = [None] * get_world_size()
    torch.distributed.all_gather_object(parts, part)
    ref = next((p for p in parts if p is not None), None)
    if ref is None:
        raise ValueError("gather_shards: no process holds any row")
    out = np.empty((sum(len(p) for p in parts if p is not None), *ref.shape[1:]), ref.dtype)
    for r, p in enumerate(parts):
        if p is not None:
            out[r :: len(parts)] = p
    return out


def gather_batches(batches: Sequence[np.ndarray]) -> np.ndarray:
    """`gather_shards` of this rank's batches, concatenated (none at all: an empty shard)."""
    return gather_shards(np.concatenate(batches) if len(batches) else None)


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Tensors inside nested dicts/lists/tuples moved to `device` (checkpoints sent by rank 0)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def seed_offset() -> int:
    """Added to the per-epoch seed: 0 on rank 0 (the single-process seed), so that augmentations
    and dropout differ between ranks while a resumed run still repeats itself."""
    return get_rank() * _RANK_SEED_STRIDE


# ---------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------


class ShardSampler(torch.utils.data.Sampler[int]):
    """This rank's share of another sampler's order: elements rank, rank + W, rank + 2W, ...

    With ``pad=True`` (training) the order is first padded by repeating its start, as
    `DistributedSampler` does, so every rank takes the same number of steps; the shuffle itself
    is the wrapped sampler's (its generator is reseeded each epoch by `FineTuner`, which plays the
    role of `DistributedSampler.set_epoch`), so the union of the ranks' step-k batches is the
    single-process step-k batch at the global batch size. With ``pad=False`` (evaluation) no
    element repeats; `gather_shards` puts the results back in order.

    `global_batch` (training): when the order is longer than it, the order is first cut to a
    whole number of global batches, as the single process at that batch drops its last partial
    one (``drop_last``). Padding would instead add a step whenever the remainder is within W - 1
    of a full batch, changing the one-cycle schedule's length and with it every step's LR.
    """

    def __init__(
        self,
        base: Sequence[int] | torch.utils.data.Sampler[int],
        rank: int | None = None,
        world_size: int | None = None,
        *,
        pad: bool = True,
        global_batch: int | None = None,
    ) -> None:
        self.base = base
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise InvalidParameterError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self.pad = pad
        self.global_batch = global_batch

    def _kept(self, n: int) -> int:
        """How many elements of an order of `n` are dealt (the global ``drop_last`` cut)."""
        gb = self.global_batch
        return n - n % gb if self.pad and gb and n > gb else n

    def __len__(self) -> int:
        n = self._kept(len(self.base))  # type: ignore[arg-type]
        if self.pad:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        order = order[: self._kept(len(order))]
        if self.pad and order:
            total = math.ceil(len(order) / self.world_size) * self.world_size
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return iter(order[self.rank :: self.world_size])


def _seed_worker(worker_id: int, rank: int) -> None:
    """DataLoader workers of different ranks draw different augmentations."""
    seed = (torch.initial_seed() + rank * _RANK_SEED_STRIDE) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def shard_loader(loader: torch.utils.data.DataLoader, *, train: bool) -> Any:
    """The same loader over this rank's shard (see `ShardSampler`); unchanged when not
    distributed. Training shards take the steps one process would at the global batch size
    (``batch_size x world``): whole global batches, or one padded batch when there is less."""
    if not is_distributed():
        return loader
    batch_size = loader.batch_size or 1
    sampler = ShardSampler(
        loader.sampler,  # type: ignore[arg-type]
        pad=train,
        global_batch=batch_size * get_world_size() if train else None,
    )
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and len(sampler) > batch_size,
        num_workers=loader.num_workers,
        generator=loader.generator,
        worker_init_fn=(
            functools.partial(_seed_worker, rank=get_rank())
            if train and loader.num_workers
            else None
        ),
    )


def wrap_model(model: nn.Module, device: torch.device, *, sync_bn: bool) -> nn.Module:
    """`model` itself when not distributed, else a `DistributedDataParallel` around it.

    Wrap after freezing: DDP reduces the gradients of the parameters that require them at
    construction, and broadcasts rank 0's weights and buffers then. `sync_bn` turns BatchNorm into
    `SyncBatchNorm` (statistics over the global batch; CUDA only, in place, same state-dict keys).
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn and is_main_process():
        logger.warning(
            "BatchNorm statistics train per process on CPU (SyncBatchNorm needs CUDA); "
            "rank 0's running statistics are kept. --bn freeze avoids this."
        )
    # frozen BatchNorm: buffers never change, so no per-step sync (the init sync stays)
    sync_key = (
        "forward_sync_buffers"  # the newer name of broadcast_buffers
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else "broadcast_buffers"
    )
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(model, device_ids=device_ids, **{sync_key: sync_bn})


def rank_device(device: str) -> str:
    """The device this rank trains on: its own GPU (``cuda:LOCAL_RANK``) under DDP on CUDA."""
    if not is_distributed() or device not in ("auto", "cuda"):
        return device
    if torch.distributed.get_backend() == "nccl":
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu" if device == "auto" else device


def run_info(batch_size: int) -> dict[str, Any]:
    """The ``distributed`` block of metrics.json ({} for a single process)."""
    if not is_distributed():
        return {}
    world = get_world_size()
    return {
        "distributed": {
            "world_size": world,
            "backend": str(torch.distributed.get_backend()),
            "batch_size_per_process": batch_size,
            "global_batch_size": batch_size * world,
        }
    }
