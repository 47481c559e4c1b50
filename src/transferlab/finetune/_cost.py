"""What a fine-tune will cost before it starts: one training step and one evaluation image,
timed on this machine with the configuration's network, input size, frozen groups and
precision, then scaled by the data's size (`estimate_seconds`). `transferlab auto` starts only
the fine-tunes whose estimate fits the time left."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from transferlab.finetune._config import FinetuneConfig
from transferlab.finetune._predict import predict_batch

__all__ = ["OVERHEAD", "StepCost", "measure_step_cost"]

#: time a fine-tune spends beyond its measured steps and evaluations (decoding and augmenting
#: the images on the training thread, checkpoints, the one-cycle schedule). A first figure, not
#: yet fitted: the actual / estimated ratios measured so far range 0.7-4.3, because the step is
#: timed once, and other work sharing the cores later slows training (benchmarks/RESULTS.md,
#: issue 18); the `Deadline` callback holds the budget when the estimate is short
OVERHEAD = 1.3


@dataclass(frozen=True)
class StepCost:
    """Measured seconds of one optimiser step (a batch of ``batch_size``) and of one image's
    evaluation forward pass (with TTA when the config asks for it), at ``image_size``."""

    train_step_s: float
    eval_image_s: float
    batch_size: int
    image_size: int

    def estimate_seconds(self, config: FinetuneConfig, n_train: int, n_val: int) -> float:
        """Seconds a fine-tune of `config` on `n_train` / `n_val` images should take: decoding
        and the probe that starts the head (one pass over both), every epoch's steps and
        validation, WiSE's blends (4 validations), times `OVERHEAD`."""
        epochs = config.freeze_epochs + config.epochs
        steps = max(1, n_train // self.batch_size)  # the loader drops the last partial batch
        validations = epochs + (4 if config.wise == "auto" else 1 if config.wise != "off" else 0)
        seconds = (
            (n_train + n_val) * self.eval_image_s / (2 if config.tta else 1)
            + epochs * steps * self.train_step_s
            + validations * n_val * self.eval_image_s
        )
        return seconds * OVERHEAD


def measure_step_cost(config: FinetuneConfig, classes: list[str], *, steps: int = 2) -> StepCost:
    """Time `steps` training steps (after one warm-up) and one evaluation batch of the network
    `config` describes, on random inputs; the weights are built as `FineTuner` builds them
    and thrown away."""
    from transferlab.finetune._tuner import FineTuner

    tuner = FineTuner(config, progress=False)
    tuner._setup(classes)
    tuner.freeze_to(config.freeze_to)
    bb = tuner.backbone_
    model = bb.model
    size = tuner.size_
    opt, _ = tuner._optimizer(float(tuner.settings_.lr or 0.0), config.lr_mult)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    tuner.loss_func = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(config.batch_size, 3, size, size, generator=gen)
    tuner.xb = x.to(bb.device).contiguous(memory_format=torch.channels_last)
    tuner.yb = torch.randint(0, len(classes), (config.batch_size,), generator=gen).to(bb.device)
    tuner.cbs_ = []
    tuner._set_train_mode()
    tuner._train_batch(model, opt, sched)  # warm-up: allocations, kernel choice
    t0 = time.perf_counter()
    for _ in range(steps):
        tuner._train_batch(model, opt, sched)
    train_step = (time.perf_counter() - t0) / steps
    n_eval = min(32, max(8, config.batch_size))
    xe = torch.randn(n_eval, 3, size, size, generator=gen)
    model.eval()
    predict_batch(model, xe[:2], device=bb.device, tta=config.tta)  # warm-up
    t0 = time.perf_counter()
    predict_batch(model, xe, device=bb.device, tta=config.tta)
    eval_image = (time.perf_counter() - t0) / n_eval
    return StepCost(train_step, eval_image, config.batch_size, size)
