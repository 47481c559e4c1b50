"""DDP fine-tuning under torchrun: 2 CPU processes (gloo) against 1, resume, rank-0-only output.

The comparison is exact in what each step sees: `ShardSampler` deals the single-process shuffle
round-robin to the ranks, so with augmentation off, 2 ranks x batch 4 train on the same 8 images
per step as 1 process x batch 8, and DDP averages the two half-batch gradients into that batch's
gradient. What differs is float arithmetic only: two 4-image means averaged instead of one
8-image mean, convolutions run on 4 instead of 8 images, the gloo all-reduce. Measured here: the
two runs agree to 1e-7 in every epoch's losses, while 1 process x batch 4 (the wrong global batch)
differs from 1 x 8 by 4e-4 after one epoch and 3e-2 after three; TOL sits between. In fp32:
on a CPU with bf16, ``--precision auto`` autocasts, and bf16 rounding of 4- vs 8-image batches
differs by 1.7e-4 after three epochs (seen on an AVX-512/BF16 machine), which is not DDP's doing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.cli import app
from transferlab.data import load_dataset
from transferlab.distributed import ddp as _ddp
from transferlab.finetune import FinetuneConfig, FineTuner

TOL = 1e-4  # relative; see the module docstring
TIMEOUT = 300  # seconds per torchrun launch (about 20 s here)
EPOCHS = 3
runner = CliRunner()
TESTS = Path(__file__).resolve().parent

COMMON = [
    "--backbone", "test_resnet", "--weights", "random", "--image-size", "64",
    "--epochs", str(EPOCHS), "--lr", "5e-3", "--no-augment", "--workers", "0", "--device", "cpu",
    "--precision", "fp32",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 12 training images (24 = 3 global batches of 8), 2 x 5 validation images
    (10: the ranks' validation shards are 5 and 5, unpadded)."""
    root = tmp_path_factory.mktemp("ddp") / "data"
    build_image_folder(root / "train", n_per_class=12, seed=1)
    build_image_folder(root / "val", n_per_class=5, seed=2)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun(script: list[str], args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2` on a free port (static rendezvous: MASTER_ADDR/PORT)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *script, *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, env={**_env(), **env}, check=False
    )


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _history(m: dict, key: str) -> list[float]:
    return [h[key] for h in m["history"]]


@pytest.fixture(scope="module")
def one_process(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference: 1 process at the global batch size 8."""
    out = tmp_path_factory.mktemp("one") / "run"
    res = runner.invoke(
        app, ["finetune", str(data), "--out", str(out), *COMMON, "--batch-size", "8"]
    )
    assert res.exit_code == 0, res.output
    return _metrics(out)


@pytest.fixture(scope="module")
def two_processes(data: Path, tmp_path_factory: pytest.TempPathFactory):
    """`transferlab finetune --nproc 2`: 2 CPU processes of batch 4 (global batch 8). The
    launcher runs in this process; the workers' output (fd 1 and 2) goes to a log file."""
    out = tmp_path_factory.mktemp("two") / "run"
    log = out.parent / "workers.log"
    args = ["finetune", str(data), "--out", str(out), *COMMON, "--batch-size", "4", "--nproc", "2"]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            res = runner.invoke(app, args, env={"RANK": None, "WORLD_SIZE": None})
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    workers = log.read_text()
    assert res.exit_code == 0, res.output + workers
    return out, res.output, workers


def test_two_processes_match_one_at_the_same_global_batch(one_process, two_processes):
    two = _metrics(two_processes[0])
    assert two["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "batch_size_per_process": 4,
        "global_batch_size": 8,
    }
    assert "distributed" not in one_process
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert _history(two, key) == pytest.approx(_history(one_process, key), rel=TOL), key
    assert two["probe_val_accuracy"] == one_process["probe_val_accuracy"]
    assert two["wise_alpha"] == one_process["wise_alpha"]
    assert two["best_epoch"] == one_process["best_epoch"]
    assert two["accuracy"] == pytest.approx(one_process["accuracy"], abs=1e-9)
    assert two["log_loss"] == pytest.approx(one_process["log_loss"], rel=TOL)
    # it trained: the losses moved well beyond the tolerance
    assert abs(_history(two, "train_loss")[-1] - _history(two, "train_loss")[0]) > 100 * TOL


def test_only_rank_zero_reports_and_writes(two_processes):
    out, summary, workers = two_processes
    assert summary.count("fine-tuned on 2 classes") == 1  # the launcher's summary
    assert "fine-tuned on 2 classes" not in workers  # no rank printed one
    assert workers.count("epoch 1 (unfrozen)") == 1  # progress lines, rank 0 only
    assert "Traceback" not in workers
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best.pt",
        "init.pt",
        "last.pt",
    ]
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert saved["world_size"] == 2 and saved["epoch"] == EPOCHS
    for name in ("report.html", "training_curves.png", "model/weights.safetensors"):
        assert (out / name).exists(), name


@pytest.mark.slow  # two more torchrun launches (about 100 s on this 2-core machine)
def test_interrupted_torchrun_run_resumes_to_the_same_result(data, two_processes, tmp_path):
    out = tmp_path / "run"
    args = [str(data), "--out", str(out), *COMMON, "--batch-size", "4"]
    stopped = _torchrun([str(TESTS / "ddp_interrupt.py")], args, DDP_STOP_AFTER_EPOCH="1")
    assert stopped.returncode != 0  # rank 0 "pressed Ctrl-C" after epoch 1; torchrun ends rank 1
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert not (out / "metrics.json").exists()

    resumed = _torchrun(["-m", "transferlab", "finetune"], [*args, "--resume"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    printed = resumed.stdout + resumed.stderr  # epoch lines are progress: on stderr
    assert "epoch 1 (unfrozen)" not in printed  # epoch 1 was not run again
    assert printed.count("epoch 3 (unfrozen)") == 1
    full, again = _metrics(two_processes[0]), _metrics(out)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert _history(again, key) == pytest.approx(_history(full, key), rel=1e-6), key
    assert again["accuracy"] == full["accuracy"]


def test_resuming_with_another_process_count_is_refused(data, two_processes):
    out = two_processes[0]
    args = ["finetune", str(data), "--out", str(out), *COMMON, "--batch-size", "4", "--resume"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "made by 2 process(es), this run has 1" in res.output
    assert "Traceback" not in res.output


# -- fast checks, no process group ---------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:'transferlab.__main__' found in sys.modules:RuntimeWarning")
def test_python_m_transferlab_finetune_is_the_finetune_command(monkeypatch, capsys):
    """The torchrun entry: `torchrun ... -m transferlab finetune ...` is the finetune command."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["transferlab", "finetune", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("transferlab", run_name="__main__")
    assert exc.value.code == 0
    assert "--nproc" in capsys.readouterr().out


def test_shard_sampler_deals_the_order_round_robin():
    order = [5, 3, 9, 0, 7, 1, 8]
    shards = [list(_ddp.ShardSampler(order, r, 2)) for r in range(2)]
    assert shards == [[5, 9, 7, 8], [3, 0, 1, 5]]  # padded with the order's start
    assert [len(_ddp.ShardSampler(order, r, 2)) for r in range(2)] == [4, 4]
    # batches of 2 per rank, zipped, are the single-process batches of 4
    assert sorted(shards[0][:2] + shards[1][:2]) == sorted(order[:4])
    unpadded = [list(_ddp.ShardSampler(order, r, 3, pad=False)) for r in range(3)]
    assert unpadded == [[5, 0, 8], [3, 7], [9, 1]]
    assert [len(_ddp.ShardSampler(order, r, 3, pad=False)) for r in range(3)] == [3, 2, 2]
    assert sorted(i for s in unpadded for i in s) == sorted(order)


def test_shard_sampler_takes_the_steps_of_one_process_at_the_global_batch():
    """7 images, 2 ranks x batch 2: one process at batch 4 drops the last 3 and takes 1 step.
    Padding alone would give each rank 4 images, 2 steps, and a one-cycle schedule of another
    length (so another LR at every step)."""
    order = [5, 3, 9, 0, 7, 1, 8]
    shards = [list(_ddp.ShardSampler(order, r, 2, global_batch=4)) for r in range(2)]
    assert shards == [[5, 9], [3, 0]] and sorted(shards[0] + shards[1]) == sorted(order[:4])
    assert [len(_ddp.ShardSampler(order, r, 2, global_batch=4)) for r in range(2)] == [2, 2]
    # less than one global batch: the single process takes one partial step; ranks are padded
    few = [list(_ddp.ShardSampler(order[:3], r, 2, global_batch=4)) for r in range(2)]
    assert few == [[5, 9], [3, 5]]


def test_helpers_are_no_ops_in_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with _ddp.distributed_session("cpu") as backend:
        assert backend is None
        assert (_ddp.get_rank(), _ddp.get_world_size(), _ddp.is_main_process()) == (0, 1, True)
        assert _ddp.all_reduce_sums([1.5, 3], "cpu") == [1.5, 3]
        x = np.arange(6).reshape(3, 2)
        assert _ddp.gather_shards(x) is x
        assert _ddp.on_main(lambda: 7) == 7
        assert _ddp.seed_offset() == 0
        assert _ddp.run_info(4) == {}
        model = torch.nn.Linear(2, 2)
        assert _ddp.wrap_model(model, torch.device("cpu"), sync_bn=True) is model


def _predict_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    """One gloo process of `test_a_process_with_an_empty_validation_shard_still_gathers`."""
    from types import SimpleNamespace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        tuner = FineTuner.__new__(FineTuner)  # only what predict_proba_loader reads
        tuner.backbone_ = SimpleNamespace(
            model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)),
            device=torch.device("cpu"),
        )
        tuner.multi_label_ = False
        tuner.config = SimpleNamespace(tta=False)
        x = torch.randn(2, 3, 2, 2)  # 2 validation images, 3 processes: rank 2 gets none
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, torch.tensor([0, 2])), batch_size=64
        )
        proba, y = tuner.predict_proba_loader(_ddp.shard_loader(loader, train=False))
        np.savez(out_dir / f"rank{rank}.npz", proba=proba, y=y)
    finally:
        torch.distributed.destroy_process_group()


def test_a_process_with_an_empty_validation_shard_still_gathers(tmp_path):
    """Fewer validation images than processes: the process without any still takes part in the
    gather (it used to fail concatenating nothing, leaving the others waiting)."""
    world = 3
    torch.multiprocessing.start_processes(
        _predict_worker, args=(world, _free_port(), tmp_path), nprocs=world, start_method="fork"
    )
    got = [np.load(tmp_path / f"rank{r}.npz") for r in range(world)]
    for g in got:
        assert g["proba"].shape == (2, 3) and g["y"].tolist() == [0, 2]
        np.testing.assert_array_equal(g["proba"], got[0]["proba"])


def _on_main_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    """One gloo process of `test_any_rank_zero_error_reaches_every_rank`."""
    import datetime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20)
    )

    def make_run_dir() -> None:
        raise PermissionError(13, "Permission denied", "/readonly/run")

    try:
        _ddp.on_main(make_run_dir)
        outcome = "returned"
    except Exception as exc:
        outcome = type(exc).__name__
    (out_dir / f"rank{rank}").write_text(outcome)
    torch.distributed.destroy_process_group()


def test_any_rank_zero_error_reaches_every_rank(tmp_path):
    """Not only TransferlabError: an OSError on rank 0 (a read-only --out) ends the others at
    once instead of leaving them in the broadcast until the process-group timeout."""
    torch.multiprocessing.start_processes(
        _on_main_worker, args=(2, _free_port(), tmp_path), nprocs=2, start_method="fork"
    )
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["PermissionError"] * 2


def test_non_main_rank_writes_nothing(data, tmp_path, monkeypatch):
    """The rank-0 gate itself: a rank that is not 0 trains, but leaves no file behind."""
    monkeypatch.setattr(_ddp, "is_main_process", lambda: False)
    ds = load_dataset(data)
    cfg = FinetuneConfig(
        backbone="test_resnet", weights="random", image_size=48, epochs=1, batch_size=8,
        num_workers=0, wise="off",
    )  # fmt: skip
    tuner = FineTuner(cfg, progress=True)
    result = tuner.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "ck")
    assert len(result.history) == 1
    assert tuner.progress is False
    assert not (tmp_path / "ck").exists()


def test_torchrun_environment_errors_are_clear(data, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    base = ["finetune", str(data), "--out", str(tmp_path / "x"), *COMMON]
    res = runner.invoke(app, base)
    assert res.exit_code == 2
    assert "MASTER_ADDR" in res.output and "torchrun" in res.output
    res = runner.invoke(app, [*base, "--nproc", "2"])
    assert res.exit_code == 2
    assert "already runs under torchrun" in res.output
    assert not (tmp_path / "x").exists()


def test_nproc_on_missing_gpus_is_a_clear_error(data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    args = ["finetune", str(data), "--out", str(tmp_path / "x"), "--nproc", "2", "--device", "cuda"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "CUDA is not available" in res.output


def test_old_torchrun_entry_names_the_new_one():
    """`-m transferlab.finetune` (the entry before issue 16) fails with the new spelling."""
    import subprocess

    run = subprocess.run(
        [sys.executable, "-m", "transferlab.finetune", "data", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "python -m transferlab finetune" in run.stderr and "Traceback" not in run.stderr
