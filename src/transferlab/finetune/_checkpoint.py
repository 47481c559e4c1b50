"""Checkpoints: ``last.pt`` after every epoch (atomically), ``best.pt``, and resuming from them.

A resumed run ends with the same result as an uninterrupted one: the loop reseeds per epoch, and
``last.pt`` holds everything else that carries over (weights, optimiser, schedule, history, the
callbacks' state such as the EMA). Keys are only ever added, so an older ``last.pt`` resumes.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from transferlab.distributed import ddp as _ddp
from transferlab.exceptions import InvalidParameterError
from transferlab.finetune._config import CHECKPOINT, config_defaults

__all__ = ["BEST", "check_resumable", "checkpoint_state", "load_file", "write_checkpoint"]

BEST = "best.pt"


def load_file(path: Path | None, device: torch.device, *, weights_only: bool = True) -> Any:
    """``torch.load(path)`` onto `device`, or None when there is no such file. Under DDP rank 0
    reads it and sends it to the others (the run directory need not be shared)."""
    if not _ddp.is_distributed():
        if path is None or not path.exists():
            return None
        return torch.load(path, map_location=device, weights_only=weights_only)

    def read() -> Any:
        if path is None or not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=weights_only)

    return _ddp.to_device(_ddp.on_main(read), device)


def check_resumable(state: dict[str, Any], fingerprint: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint made by another process count or with other data or settings; a
    config field added since it was written reads as its default."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != _ddp.get_world_size():
        raise InvalidParameterError(
            f"cannot resume from {path}: it was made by {saved_world} "
            f"process(es), this run has {_ddp.get_world_size()}; the global batch and the "
            f"LR schedule depend on it, so resume with {saved_world} (--nproc / "
            "--nproc_per_node x nodes)"
        )
    saved = dict(state.get("fingerprint") or {})
    if isinstance(saved.get("config"), dict):  # a checkpoint from before a config field
        saved["config"] = {**config_defaults(), **saved["config"]}  # existed: its default
    if saved != fingerprint:
        raise InvalidParameterError(
            f"cannot resume from {path}: it was made with other data or settings; "
            "rerun without --resume (or with the original settings)"
        )


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_checkpoint(
    ckpt_dir: Path,
    state: dict[str, Any],
    best: dict[str, Any] | None,
) -> None:
    """Write `state` as ``last.pt`` and, when this epoch is the best, `best` as ``best.pt``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(state, ckpt_dir / CHECKPOINT)
    if best is not None:
        _save_atomic(best, ckpt_dir / BEST)


def checkpoint_state(tuner: Any, phase: str, epoch_in_phase: int, opt: Any, sched: Any) -> dict:
    """What ``last.pt`` holds after an epoch of `tuner`."""
    state = {
        "model": tuner.backbone_.model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "phase": phase,
        "epoch_in_phase": epoch_in_phase,
        "epoch": tuner.epoch,
        "history": tuner.history,
        "classes": tuner.classes_,
        "config": asdict(tuner.config),
        "probe_val_accuracy": getattr(tuner, "probe_val_score_", None),  # key kept: old files
        "fingerprint": tuner.fingerprint_,
        "world_size": _ddp.get_world_size(),
        "ema": None,  # the EMA callback's state replaces these when it is on
        "ema_steps": 0,
    }
    for cb in tuner.cbs_:
        state.update(cb.state_dict())
    return state
