"""The ``--nproc N`` launcher: torchrun's elastic agent in this process, N workers each running
`transferlab.pipeline.finetune` in a DDP process group.

It is a run, not part of `transferlab.distributed` (a leaf that only holds collectives): the workers
import the pipeline, and a lower layer must never import a higher one. Workers are started as
``python -m transferlab.pipeline._launch JOB_JSON``; users launch torchrun themselves with
``torchrun --nproc_per_node N -m transferlab finetune DATA ...``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from transferlab.distributed.ddp import distributed_session
from transferlab.exceptions import DistributedError, InvalidParameterError, TransferlabError
from transferlab.finetune import FinetuneConfig

logger = logging.getLogger(__name__)

__all__ = ["launch_finetune"]


def launch_finetune(nproc: int, job: dict[str, Any], *, timeout_s: float = 1800.0) -> None:
    """Run `transferlab.pipeline.finetune` in `nproc` processes on this machine (DDP).

    Starts torchrun's elastic agent in this process (standalone rendezvous on a free local port)
    with workers running ``python -m transferlab.pipeline._launch JOB``; `job` holds the
    arguments of `pipeline.finetune` (``config`` as a dict). Returns when all workers have.

    Raises:
        DistributedError: a worker failed (its own message is above, on stderr).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise InvalidParameterError(f"nproc must be >= 1, got {nproc}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"transferlab-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        rdzv_configs={"timeout": 300},
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    if not logger.isEnabledFor(logging.INFO):
        quiet.setLevel(logging.CRITICAL)  # the agent's own failure report repeats ours
    payload = json.dumps({**job, "timeout_s": timeout_s})
    try:
        elastic_launch(config, sys.executable)("-m", "transferlab.pipeline._launch", payload)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        codes = {r: f.exitcode for r, f in exc.failures.items()}
        raise DistributedError(
            f"distributed fine-tuning failed: process {rank} of {nproc} exited with code "
            f"{failure.exitcode} (all failures: {codes}); its own message is above"
        ) from None
    except SignalException:
        raise KeyboardInterrupt from None
    finally:
        quiet.setLevel(level)


def _worker_main(argv: Sequence[str]) -> int:
    """A worker of `launch_finetune`: join the group, run `pipeline.finetune`, exit code."""
    from transferlab.pipeline._core import finetune

    logging.basicConfig(
        level=getattr(logging, os.environ.get("TRANSFERLAB_LOG", "WARNING").upper(), 30),
        format=f"%(levelname)s rank{os.environ.get('RANK', '?')} %(name)s: %(message)s",
    )
    if len(argv) != 1:
        sys.stderr.write("usage: python -m transferlab.pipeline._launch JOB_JSON\n")
        return 2
    job = json.loads(argv[0])
    config = FinetuneConfig(**job.pop("config"))
    timeout_s = float(job.pop("timeout_s", 1800.0))
    try:
        with distributed_session(config.device, timeout_s):
            finetune(job.pop("data"), job.pop("out"), config, **job)
    except TransferlabError as exc:
        sys.stderr.write(f"error (rank {os.environ.get('RANK', '?')}): {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
