"""The ``--nproc N`` launcher: torchrun's elastic agent in this process, N workers each running
`transferlab.pipeline.run_finetune` in a DDP process group.

`run_finetune_nproc` checks the settings, loads the dataset and prepares the output folder once,
here; the workers get the loaded split (a JSON file) and do neither again.

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
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from transferlab._internal.json import write_json
from transferlab.data import Dataset, Sample
from transferlab.distributed.ddp import distributed_session
from transferlab.exceptions import DistributedError, InvalidParameterError, TransferlabError
from transferlab.finetune import FinetuneConfig
from transferlab.pipeline._finetune import FinetuneRunConfig, _run_finetune
from transferlab.pipeline._results import RunResult

logger = logging.getLogger(__name__)

__all__ = ["launch_finetune", "run_finetune_nproc"]


def launch_finetune(nproc: int, job: dict[str, Any], *, timeout_s: float = 1800.0) -> None:
    """Run a fine-tune in `nproc` processes on this machine (DDP).

    Starts torchrun's elastic agent in this process (standalone rendezvous on a free local port)
    with workers running ``python -m transferlab.pipeline._launch JOB``; `job` holds the
    arguments of the old `pipeline.finetune` (``config`` as a dict), or, from
    `run_finetune_nproc`, a ``dataset_file`` already loaded. Returns when all workers have.

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


def run_finetune_nproc(
    config: FinetuneRunConfig, nproc: int, *, timeout_s: float = 1800.0
) -> RunResult:
    """`run_finetune` in `nproc` DDP processes (``--nproc``): what can be checked is checked here
    (one clear error, not one per process), the dataset is loaded and `out` prepared once, then
    torchrun's agent runs the workers; the result is read back from what rank 0 wrote."""
    import torch

    from transferlab._internal.rundir import prepare_out
    from transferlab.backbones import resolve_device
    from transferlab.distributed import ddp as _ddp

    cfg = config.training()
    if _ddp.launched_by_torchrun():
        raise InvalidParameterError(
            "--nproc starts torchrun itself; this process already runs under torchrun "
            "(RANK/WORLD_SIZE are set): leave --nproc out"
        )
    dev = resolve_device(cfg.device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise InvalidParameterError(
                f"--nproc {nproc} with --device {cfg.device}: each process takes its own GPU; "
                "pass --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        if nproc > torch.cuda.device_count():
            raise InvalidParameterError(
                f"--nproc {nproc} needs {nproc} GPUs, {torch.cuda.device_count()} visible; "
                "lower --nproc or use --device cpu"
            )
    ds = config.dataset()
    out = Path(config.out)
    if config.resume:
        out.mkdir(parents=True, exist_ok=True)
    else:
        prepare_out(out, config.overwrite)
    with tempfile.TemporaryDirectory(prefix="transferlab-ddp-") as tmp:
        dataset_file = write_json(Path(tmp) / "dataset.json", asdict(ds))
        job = {
            "dataset_file": str(dataset_file),
            "out": str(out),
            "config": asdict(cfg),
            "strict": config.strict,
            "resume": config.resume,
            "progress": config.progress,
        }
        launch_finetune(nproc, job, timeout_s=timeout_s)
    metrics = json.loads((out / "metrics.json").read_text())
    return RunResult(
        metrics=metrics,
        out=out,
        model_dir=out / "model",
        report=out / "report.html",
        confusion_png=out / "confusion_matrix.png" if not metrics.get("multi_label") else None,
        skipped=[(s["path"], s["reason"]) for s in metrics.get("skipped", [])],
        metrics_file=out / "metrics.json",
    )


def _read_dataset(path: str) -> Dataset:
    d = json.loads(Path(path).read_text())
    for split in ("train", "val", "test"):
        d[split] = [Sample(s["path"], s["label"], tuple(s["labels"])) for s in d[split]]
    return Dataset(**d)


def _worker_main(argv: Sequence[str]) -> int:
    """A worker of `launch_finetune`: join the group, run the fine-tune, exit code."""
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
    dataset_file = job.pop("dataset_file", None)
    try:
        with distributed_session(config.device, timeout_s):
            if dataset_file is not None:  # from run_finetune_nproc: loaded and prepared there
                run = FinetuneRunConfig(
                    data=_read_dataset(dataset_file), out=job.pop("out"), finetune=config, **job
                )
                _run_finetune(run, prepare=False)
            else:  # a job of the old shape: the arguments of pipeline.finetune
                run = FinetuneRunConfig(data=job.pop("data"), out=job.pop("out"), finetune=config)
                _run_finetune(replace(run, **job), prepare=True)
    except TransferlabError as exc:
        sys.stderr.write(f"error (rank {os.environ.get('RANK', '?')}): {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
