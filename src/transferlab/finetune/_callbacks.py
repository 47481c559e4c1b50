"""Callbacks in the fastai manner: ordered hooks on the training loop's events.

The loop (`FineTuner`) only trains and validates; what varies around it is a `Callback`:
MixUp blends batches, EMA averages weights, EarlyStopping ends the run, WiSE interpolates the
start and the fine-tuned weights at the end, Progress reports. Each event receives the
`FineTuner`, whose attributes (``xb``, ``yb``, ``pred``, ``loss``, ``history`` ...) a callback
may read and, where the event says so, replace.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3

from transferlab.distributed import ddp as _ddp
from transferlab.finetune._checkpoint import load_file
from transferlab.finetune._config import FinetuneConfig

__all__ = [
    "EMA",
    "Callback",
    "CancelFitException",
    "Deadline",
    "EarlyStopping",
    "MixUp",
    "Progress",
    "WiSE",
    "with_built_ins",
]

#: The `FineTuner` each event receives (duck-typed: `_tuner` imports this module, not back).
Tuner = Any

EVENTS = (
    "before_fit",
    "before_epoch",
    "before_batch",
    "after_loss",
    "after_step",
    "after_batch",
    "before_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
)


class CancelFitException(Exception):
    """Raise from a callback to end training cleanly after the current epoch."""


class Callback:
    """Hooks into the training loop. Subclass and override any of the events, in `order`.

    Events, each receiving the `FineTuner` (lower `order` runs first):

    * ``before_fit`` (data, head and any resumed state are ready), ``after_fit`` (the best
      epoch's weights are loaded; the result is not built yet);
    * ``before_epoch``, ``after_epoch`` (after the checkpoint; raise `CancelFitException` to stop);
    * ``before_batch`` (may replace ``tuner.xb``), ``after_loss`` (may replace ``tuner.loss``),
      ``after_step`` (optimiser and schedule stepped), ``after_batch``;
    * ``before_validate``, ``after_validate`` (``tuner.history`` has the epoch's row).

    A callback whose state must survive ``--resume`` returns it from `state_dict` (merged into
    ``last.pt``) and reads it back in `load_state_dict`.
    """

    order = 0

    def before_fit(self, tuner: Tuner) -> None: ...
    def before_epoch(self, tuner: Tuner) -> None: ...
    def before_batch(self, tuner: Tuner) -> None: ...
    def after_loss(self, tuner: Tuner) -> None: ...
    def after_step(self, tuner: Tuner) -> None: ...
    def after_batch(self, tuner: Tuner) -> None: ...
    def before_validate(self, tuner: Tuner) -> None: ...
    def after_validate(self, tuner: Tuner) -> None: ...
    def after_epoch(self, tuner: Tuner) -> None: ...
    def after_fit(self, tuner: Tuner) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EarlyStopping(Callback):
    """Stop when validation accuracy has not improved for `patience` epochs."""

    order = 10

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def after_epoch(self, tuner: Tuner) -> None:
        accs = [h[tuner.score_key_] for h in tuner.history]
        best = int(np.argmax(accs))
        if len(accs) - 1 - best >= self.patience:
            raise CancelFitException


class MixUp(Callback):
    """MixUp (Zhang et al. 2018): each batch blended with a shuffled copy of itself by
    lam ~ Beta(alpha, alpha), the loss with both labels. Draws from the global NumPy and torch
    generators, which the loop reseeds every epoch, so a resumed run draws the same pairs."""

    order = -20

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.lam, self.perm = 1.0, None

    def before_batch(self, tuner: Tuner) -> None:
        self.lam, self.perm = 1.0, None
        x, y = tuner.xb, tuner.yb
        if len(y) < 2:
            return
        self.lam = float(np.random.beta(self.alpha, self.alpha))
        self.perm = torch.randperm(len(y), device=x.device)
        mixed = self.lam * x + (1 - self.lam) * x[self.perm]
        tuner.xb = mixed.contiguous(memory_format=torch.channels_last)

    def after_loss(self, tuner: Tuner) -> None:
        if self.perm is not None:
            other = tuner.loss_func(tuner.pred.float(), tuner.yb[self.perm])
            tuner.loss = self.lam * tuner.loss + (1 - self.lam) * other


class _BiasCorrectedEma(ModelEmaV3):
    """timm's `ModelEmaV3` (foreach lerp over parameters and buffers, integer buffers copied)
    with the decay of step t bias-corrected as Adam's moments: the average weighs step t by
    (1 - d) d^(T - t) / (1 - d^T). Step 1 has weight 1 (the starting weights never count) and the
    average covers about the last 1 / (1 - d) steps from the start. None of ModelEmaV3's own
    schedules gives these weights: its warmup ``1 - (1 + t) ** -power`` starts as a plain mean
    (weight 1 / t) and reaches d only after ~1 / (1 - d) steps."""

    def get_decay(self, step: int | None = None) -> float:
        if step is None:
            return self.decay
        return 1.0 - (1.0 - self.decay) / (1.0 - self.decay**step)


class EMA(Callback):
    """Exponential moving average of the weights (timm's ``--model-ema``): updated after every
    optimiser step; validated, selected and saved in place of the raw weights, which training
    goes on from."""

    order = -10

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: ModelEmaV3 | None = None
        self.steps = 0
        self._raw: dict[str, torch.Tensor] | None = None

    def before_fit(self, tuner: Tuner) -> None:
        self.ema = _BiasCorrectedEma(tuner.backbone_.model, decay=self.decay)
        self.steps = 0

    def after_step(self, tuner: Tuner) -> None:
        assert self.ema is not None
        self.steps += 1
        self.ema.update(tuner.backbone_.model, step=self.steps)

    def before_validate(self, tuner: Tuner) -> None:
        assert self.ema is not None
        model = tuner.backbone_.model
        self._raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.ema.module.state_dict())

    def after_validate(self, tuner: Tuner) -> None:
        if self._raw is not None:
            tuner.backbone_.model.load_state_dict(self._raw)  # training goes on from the raw
            self._raw = None

    def state_dict(self) -> dict[str, Any]:
        assert self.ema is not None
        return {"ema": self.ema.module.state_dict(), "ema_steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.ema is not None
        if state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.steps = int(state.get("ema_steps", 0))


class WiSE(Callback):
    """Weight-space ensembling (WiSE-FT, Wortsman et al. 2022) at the end: interpolate the
    starting point and the fine-tuned weights, keep the alpha with the best validation score
    (ties: lower validation loss). The starting point is kept as ``init.pt`` beside the
    checkpoints, so a resumed run blends from the same one.

    Args:
        alphas: the alphas to try (a single one fixes it).
        init_path: where the starting weights are kept (None: memory only).
    """

    order = -10

    def __init__(self, alphas: list[float], init_path: Path | None = None) -> None:
        self.alphas = alphas
        self.init_path = init_path
        self.init_state: dict[str, torch.Tensor] | None = None

    def before_fit(self, tuner: Tuner) -> None:
        model = tuner.backbone_.model
        resumed = tuner.resume_state_ is not None
        self.init_state = load_file(self.init_path, tuner.backbone_.device) if resumed else None
        if self.init_state is None:
            self.init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.init_path is not None and _ddp.is_main_process():
                self.init_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(self.init_state, self.init_path)

    def after_fit(self, tuner: Tuner) -> None:
        assert self.init_state is not None
        model = tuner.backbone_.model
        start = self.init_state
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def blend(alpha: float) -> dict[str, torch.Tensor]:
            return {
                k: (1 - alpha) * start[k] + alpha * v if v.is_floating_point() else v
                for k, v in tuned.items()
            }

        results = {}
        for alpha in self.alphas:
            model.load_state_dict(blend(alpha))
            loss, score = tuner.validate()
            results[alpha] = (score, -loss)
        best = max(self.alphas, key=lambda a: results[a])
        model.load_state_dict(blend(best))
        model.eval()
        tuner.wise_alpha_ = best
        tuner.wise_scores_ = {str(a): results[a][0] for a in self.alphas}


class Progress(Callback):
    """A progress bar over each epoch's batches (running training loss), and one line per epoch
    on stderr: progress, like the bar, so stdout stays for results (``--json``)."""

    order = 50

    def __init__(self) -> None:
        self.bar: Any = None

    def before_epoch(self, tuner: Tuner) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(tuner.loaders_["train"]),
            desc=f"{tuner.phase_} epoch {tuner.epoch_in_phase_ + 1}/{tuner.n_epochs_}",
            unit="batch",
            disable=None,
            leave=False,
        )

    def after_batch(self, tuner: Tuner) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{tuner.train_loss_:.4f}")

    def before_validate(self, tuner: Tuner) -> None:
        self.bar.close()

    def after_validate(self, tuner: Tuner) -> None:
        from tqdm.auto import tqdm

        h = tuner.history[-1]
        name = "mAP" if tuner.multi_label_ else "accuracy"
        tqdm.write(
            f"epoch {h['epoch']} ({h['phase']}): train loss {h['train_loss']:.4f}  val loss "
            f"{h['val_loss']:.4f}  val {name} {h[tuner.score_key_]:.4f}  ({h['seconds']:.0f} s)",
            file=sys.stderr,
        )


def with_built_ins(
    callbacks: Sequence[Callback],
    config: FinetuneConfig,
    ckpt_dir: Path | None,
    *,
    progress: bool,
) -> list[Callback]:
    """The caller's callbacks, plus those the config asks for (and progress), in order."""
    cbs = list(callbacks)
    if config.mixup > 0:
        cbs.append(MixUp(config.mixup))
    if config.ema is not None:
        cbs.append(EMA(config.ema))
    if config.early_stopping and not any(isinstance(cb, EarlyStopping) for cb in cbs):
        cbs.append(EarlyStopping(config.early_stopping))
    if config.wise != "off":
        alphas = [0.25, 0.5, 0.75, 1.0] if config.wise == "auto" else [float(config.wise)]
        cbs.append(WiSE(alphas, ckpt_dir / "init.pt" if ckpt_dir is not None else None))
    if progress:
        cbs.append(Progress())
    return sorted(cbs, key=lambda cb: cb.order)


class Deadline(Callback):
    """Stop after the epoch when another epoch (as long as the slowest so far) would end past
    `deadline` (a `time.monotonic` reading): a run given a time budget keeps its best epoch
    instead of running over. The weights kept are still the best validated ones."""

    order = 20

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.stopped = False

    def after_epoch(self, tuner: Tuner) -> None:
        longest = max(h["seconds"] for h in tuner.history)
        if time.monotonic() + longest > self.deadline:
            self.stopped = True
            raise CancelFitException
