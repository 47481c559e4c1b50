"""The LR finder: an exponential learning-rate sweep and the LR it suggests (fastai's ``lr_find``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["LRFindResult", "suggest_lr", "sweep"]


@dataclass
class LRFindResult:
    """An exponential learning-rate sweep: where the loss falls fastest, and the LR to use.

    Attributes:
        lrs, losses: the learning rate and raw training loss of each step.
        smoothed: the losses smoothed (exponential moving average, bias-corrected).
        suggestion: the suggested peak learning rate.
        rule: how `suggestion` was chosen, in words.
        steepest: the LR where the smoothed loss falls fastest (for reference).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    steepest: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Smoothed loss against LR (log scale), with the suggestion marked; saved as PNG."""
        from transferlab._internal.plotting import pyplot as _pyplot

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        ax.plot(self.lrs, self.losses, color="0.8", lw=1, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", lw=2, label="smoothed loss")
        ax.axvline(
            self.suggestion, color="C3", ls="--", label=f"suggested lr {self.suggestion:.2g}"
        )
        ax.axvline(self.steepest, color="C2", ls=":", label=f"steepest descent {self.steepest:.2g}")
        ax.set_xscale("log")
        finite = [v for v in self.smoothed if np.isfinite(v)]
        if finite:
            lo, hi = min(finite), finite[0]
            ax.set_ylim(lo - 0.1 * abs(hi - lo + 1e-9), hi + 0.5 * abs(hi - lo + 1e-9))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"LR finder — {self.rule}")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
        out = Path(path)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def suggest_lr(
    lrs: Sequence[float], losses: Sequence[float], beta: float = 0.9
) -> tuple[list[float], float, float, str]:
    """Smooth the losses; suggest the LR of the minimum smoothed loss divided by 10 (Smith's rule,
    as fastai's ``minimum``), and report the steepest-descent LR too."""
    smoothed, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        smoothed.append(avg / (1 - beta**i))
    arr = np.asarray(smoothed)
    i_min = int(np.nanargmin(arr))
    log_lr = np.log10(np.asarray(lrs))
    if len(arr) >= 3:
        grads = (
            np.gradient(arr[: i_min + 1], log_lr[: i_min + 1])
            if i_min >= 2
            else np.gradient(arr, log_lr)
        )
        steepest = float(lrs[int(np.argmin(grads))])
    else:
        steepest = float(lrs[i_min])
    return smoothed, float(lrs[i_min]) / 10, steepest, "minimum smoothed loss / 10"


def sweep(
    model: nn.Module,
    loader: Any,
    opt: torch.optim.Optimizer,
    *,
    device: torch.device,
    start_lr: float,
    end_lr: float,
    num_it: int,
    label_smoothing: float,
    progress: bool,
) -> LRFindResult:
    """Train `model` (its trainable part, in train mode) with the LR of every group of `opt`
    multiplied by a constant factor each step, from `start_lr` to `end_lr` over `num_it` steps,
    stopping once the loss exceeds 4x its minimum; the weights are restored after."""
    from tqdm.auto import tqdm

    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gamma = (end_lr / start_lr) ** (1 / (num_it - 1))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    lrs: list[float] = []
    losses: list[float] = []
    bar = tqdm(
        total=num_it, desc="lr_find", unit="step", disable=None if progress else True, leave=False
    )
    try:
        step, best = 0, float("inf")
        while step < num_it:
            for x, t in loader:
                lr = start_lr * gamma**step
                for g in opt.param_groups:
                    g["lr"] = lr
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(x), t.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.detach())
                lrs.append(lr)
                losses.append(value)
                best = min(best, value)
                step += 1
                bar.update(1)
                if step >= num_it or not np.isfinite(value) or value > 4 * best:
                    step = num_it
                    break
    finally:
        bar.close()
        model.load_state_dict(saved)
        model.eval()
    smoothed, suggestion, steepest, rule = suggest_lr(lrs, losses)
    return LRFindResult(lrs, losses, smoothed, suggestion, rule, steepest)
