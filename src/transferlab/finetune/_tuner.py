"""`FineTuner`: the training loop. It trains and validates; the rest (MixUp, EMA, early stopping,
WiSE-FT, progress, anything a caller adds) are callbacks on its events."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from transferlab.backbones import load_backbone, reestimate_bn, use_bf16
from transferlab.data import Sample, eval_transform, train_transform
from transferlab.distributed import ddp as _ddp
from transferlab.exceptions import InvalidParameterError
from transferlab.finetune._callbacks import Callback, CancelFitException, with_built_ins
from transferlab.finetune._checkpoint import (
    BEST,
    check_resumable,
    checkpoint_state,
    load_file,
    write_checkpoint,
)
from transferlab.finetune._config import CHECKPOINT, FinetuneConfig, FinetuneResult
from transferlab.finetune._groups import (
    discriminative_optimizer,
    freeze,
    layer_groups,
    set_train_mode,
)
from transferlab.finetune._head import init_head_from_probe
from transferlab.finetune._images import (
    ImageSet,
    check_decoded,
    decode_all,
    is_grey,
    preload_size,
    targets,
)
from transferlab.finetune._losses import make_loss
from transferlab.finetune._lr_find import LRFindResult, sweep
from transferlab.finetune._precision import fp32_depthwise
from transferlab.finetune._predict import loss_and_score, predict_loader

__all__ = ["FineTuner"]

logger = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _clone(state: State) -> State:
    return {k: v.detach().clone() for k, v in state.items()}


class FineTuner:
    """Fine-tune a pretrained backbone on labelled images.

    Args:
        config: hyper-parameters (`FinetuneConfig`).
        callbacks: extra `Callback` objects (the config's MixUp, EMA, early stopping and WiSE, and
            progress, are added by `fit`).
        progress: show progress bars.

    Attributes (after `fit`):
        backbone_: the `Backbone` whose ``model`` now carries the fine-tuned weights and head.
        classes_: class names, in output order.
        groups_: layer groups (name, parameter names), shallow to deep.
        result_: the `FinetuneResult`.

    Example:
        >>> tuner = FineTuner(FinetuneConfig(backbone="test_resnet", weights="random", epochs=1))
        >>> tuner.config.freeze_epochs, tuner.config.bn_policy
        (0, 'freeze')
    """

    def __init__(
        self,
        config: FinetuneConfig | None = None,
        *,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
    ) -> None:
        self.config = config or FinetuneConfig()
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        self.cbs_: list[Callback] = list(self.callbacks)  # with the built-in ones, during fit
        self.progress = progress
        self.epoch = 0  # epochs completed (both phases)
        self.multi_label_ = False
        self.score_key_ = "val_accuracy"
        self.history: list[dict[str, Any]] = []
        self.resume_state_: dict[str, Any] | None = None

    # -- building blocks ----------------------------------------------------------------------
    def _setup(self, classes: Sequence[str]) -> None:
        cfg = self.config
        self.backbone_ = load_backbone(
            cfg.backbone,
            weights=cfg.weights,
            device=_ddp.rank_device(cfg.device),
            channels_last=True,
        )
        self.classes_ = [str(c) for c in classes]
        model = self.backbone_.model
        model.reset_classifier(len(self.classes_))
        head = model.get_classifier()
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        model.to(self.backbone_.device, memory_format=torch.channels_last)
        self.bf16_ = use_bf16(cfg.precision, self.backbone_.device)
        # CPU bf16: depthwise convolutions stay fp32 (their bf16 backward is the slow part)
        self.fp32_depthwise_ = self.bf16_ and self.backbone_.device.type == "cpu"
        self.groups_ = layer_groups(model)
        self.size_ = cfg.image_size or int(self.backbone_.data_config["input_size"][-1])
        family = self.backbone_.family
        #: the config with the family's defaults filled in (lr, layer_decay): what trains
        self.settings_ = cfg.resolved(family.name)
        native = int(self.backbone_.data_config["input_size"][-1])
        if family.tokens and self.size_ != native:
            raise InvalidParameterError(
                f"image_size (--image-size) {self.size_}: {cfg.backbone!r} is a transformer whose "
                f"patch grid is fixed at {native} px; leave --image-size unset for it"
            )
        if cfg.adapt_bn and not family.batchnorm:
            raise InvalidParameterError(
                f"adapt_bn (--adapt-bn): {cfg.backbone!r} is a {family.name} with no BatchNorm "
                "statistics to re-estimate; leave it off for this backbone"
            )

    def freeze_to(self, n: int) -> None:
        """Train only layer groups ``n`` and deeper (negative counts from the end, like fastai)."""
        self.frozen_to_ = freeze(self.backbone_.model, self.groups_, n)

    def _train_transform(
        self, images: Sequence[Image.Image]
    ) -> tuple[Callable[[Any], torch.Tensor], bool]:
        """The training augmentation the config asks for, and whether `images` are greyscale
        (judged on the first 50; it narrows colour jitter to brightness and contrast)."""
        cfg = self.config
        greyscale = all(is_grey(img) for img in images[:50])
        transform = train_transform(
            self.backbone_,
            self.size_,
            augment=cfg.augment,
            greyscale=greyscale,
            min_scale=cfg.crop_scale,
            jitter=cfg.jitter,
            style=cfg.style,
        )
        return transform, greyscale

    def _set_train_mode(self) -> None:
        set_train_mode(self.backbone_.model, self.config.bn_policy)

    def _optimizer(
        self, lr: float, lr_mult: float, *, layer_decay: bool = True
    ) -> tuple[torch.optim.Optimizer, list[float]]:
        """The optimizer of the trained groups; with the settings' layer decay (unless
        `layer_decay` is False: the head-only phase and the LR finder) instead of `lr_mult`."""
        model, wd = self.backbone_.model, self.config.weight_decay
        decay = self.settings_.layer_decay
        decay = float(decay) if layer_decay and decay not in (None, "off") else None
        return discriminative_optimizer(
            model, self.groups_, self.frozen_to_, lr, lr_mult, wd, layer_decay=decay
        )

    def _loss(self, y_train: np.ndarray) -> nn.Module:
        cfg = self.config
        return make_loss(
            y_train,
            len(self.classes_),
            multi_label=self.multi_label_,
            class_balance=cfg.class_balance,
            label_smoothing=cfg.label_smoothing,
            device=self.backbone_.device,
        )

    # -- data ---------------------------------------------------------------------------------
    def _loaders(
        self, train: Sequence[Sample], val: Sequence[Sample], on_error: str
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Decode every image once; the train (augmented), val and train_eval (un-augmented
        train) loaders and the train and val targets."""
        cfg = self.config
        geometry = eval_transform(self.backbone_, self.size_, part="geometry")
        tensor = eval_transform(self.backbone_, self.size_, part="tensor")
        tr = decode_all(
            train,
            max_pixels=cfg.max_pixels,
            progress=self.progress,
            short_side=preload_size(self.size_),
            geometry=geometry,
        )
        va = decode_all(val, max_pixels=cfg.max_pixels, progress=self.progress, geometry=geometry)
        self.failures_ = tr.failures + va.failures
        if on_error == "raise" and self.failures_:
            raise self.failures_[0]
        ml = self.multi_label_
        y_train = targets(train, tr.kept, self.classes_, multi_label=ml)
        y_val = targets(val, va.kept, self.classes_, multi_label=ml)
        check_decoded(y_train, y_val, self.classes_, multi_label=ml)
        transform, self.greyscale_ = self._train_transform(tr.train)

        g = torch.Generator().manual_seed(cfg.seed)
        self._generator = g  # reseeded every epoch: a resumed run shuffles as an uninterrupted one
        workers = cfg.num_workers if cfg.num_workers is not None else 0
        sampler = None
        if cfg.class_balance == "sampler":
            w = 1.0 / np.bincount(y_train, minlength=len(self.classes_))[y_train]
            sampler = torch.utils.data.WeightedRandomSampler(
                torch.as_tensor(w, dtype=torch.double), len(y_train), generator=g
            )
        loader = torch.utils.data.DataLoader
        loaders = {
            "train": loader(
                ImageSet(tr.train, y_train, transform),
                batch_size=cfg.batch_size,
                shuffle=sampler is None,
                sampler=sampler,
                drop_last=len(y_train) > cfg.batch_size,
                num_workers=workers,
                generator=g,
            ),
            "val": loader(ImageSet(va.eval, y_val, tensor), batch_size=64, num_workers=workers),
            "train_eval": loader(
                ImageSet(tr.eval, y_train, tensor), batch_size=64, num_workers=workers
            ),
        }
        return loaders, y_train, y_val

    # -- prediction and validation ------------------------------------------------------------
    def predict_proba_loader(self, loader: Any) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (softmax; sigmoid for multi-label; mirror TTA when configured) and
        targets, for a loader."""
        bb = self.backbone_
        return predict_loader(
            bb.model, loader, device=bb.device, multi_label=self.multi_label_, tta=self.config.tta
        )

    def _evaluate_loader(
        self, loader: Any, loss_fn: nn.Module | None = None
    ) -> tuple[float, float]:
        """Validation loss (NLL, or BCE for multi-label) and score (accuracy, or mAP)."""
        proba, y = self.predict_proba_loader(loader)
        return loss_and_score(proba, y, self.classes_, multi_label=self.multi_label_)

    def validate(self) -> tuple[float, float]:
        """The current weights' validation loss and score."""
        return self._evaluate_loader(self.loaders_["val"])

    def _best_index(self) -> int:
        """Index in `history` of the best epoch by validation; ties go to the later epoch. The
        one rule for the weights kept, best.pt and the reported best epoch."""
        scores = [h[self.score_key_] for h in self.history]
        return len(scores) - 1 - int(np.argmax(scores[::-1]))

    # -- the loop -----------------------------------------------------------------------------
    def _event(self, name: str) -> None:
        for cb in self.cbs_:
            getattr(cb, name)(self)

    def _train_batch(self, model: nn.Module, opt: Any, sched: Any) -> None:
        """One optimiser step on ``self.xb, self.yb`` with the events around it."""
        self._event("before_batch")
        kind = self.xb.device.type
        with (
            torch.autocast(kind, torch.bfloat16, enabled=self.bf16_),
            fp32_depthwise(model, kind, enabled=self.fp32_depthwise_),
        ):
            self.pred = model(self.xb)
        self.loss = self.loss_func(self.pred.float(), self.yb)
        self._event("after_loss")
        opt.zero_grad(set_to_none=True)
        self.loss.backward()
        if self.config.grad_clip:
            params = [p for g in opt.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        opt.step()
        sched.step()
        self._event("after_step")

    def _run_phase(
        self,
        phase: str,
        epochs: int,
        lr: float,
        lr_mult: float,
        ckpt_dir: Path | None,
        start_epoch_in_phase: int,
        resume_state: dict[str, Any] | None,
    ) -> bool:
        """One one-cycle schedule over `epochs`; returns False when stopped early/cancelled."""
        opt, max_lrs = self._optimizer(lr, lr_mult)
        steps = len(self.loaders_["train"])
        # torch's one-cycle needs 2+ warm-up steps and 2+ annealing steps; tiny data gets them
        total = max(4, epochs * steps)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=max_lrs,
            total_steps=total,
            pct_start=min(max(self.config.pct_start, 2.0 / total), 0.5),
            div_factor=25.0,
            final_div_factor=1e4,
        )
        if resume_state is not None:
            opt.load_state_dict(resume_state["optimizer"])
            sched.load_state_dict(resume_state["scheduler"])
        device = self.backbone_.device
        model = self.backbone_.model
        # DDP (under torchrun): wrapped after freeze_to, as it syncs what requires grad
        train_model = _ddp.wrap_model(model, device, sync_bn=self.config.bn_policy == "train")
        self.phase_, self.n_epochs_ = phase, epochs
        for e in range(start_epoch_in_phase, epochs):
            self.epoch_in_phase_ = e
            _seed_everything(self.config.seed * 1000 + self.epoch + _ddp.seed_offset())
            self._generator.manual_seed(self.config.seed * 1000 + self.epoch)
            self._event("before_epoch")
            self._set_train_mode()
            t0 = time.perf_counter()
            total, n_seen = 0.0, 0
            loader = self.loaders_["train"]
            # The loop's progress bar (tqdm.auto) used to open, and drop, an iterator over the
            # loader each epoch: its one draw from the shuffle generator is kept, so that a seed
            # still gives the runs (and the figures in benchmarks/RESULTS.md) it always gave.
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
            for x, y in loader:
                self.xb = x.to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last
                )
                self.yb = y.to(device)
                self._train_batch(train_model, opt, sched)
                total += float(self.loss.detach()) * len(y)
                n_seen += len(y)
                self.last_loss_ = float(self.loss.detach())
                self.train_loss_ = total / n_seen
                self._event("after_batch")
            train_seconds = time.perf_counter() - t0
            total, n_seen = _ddp.all_reduce_sums([total, n_seen], device)  # over ranks
            self._event("before_validate")
            val_loss, val_score = self.validate()
            self.epoch += 1
            self.history.append(
                {
                    "epoch": self.epoch,
                    "phase": phase,
                    "train_loss": total / max(n_seen, 1),
                    "val_loss": val_loss,
                    self.score_key_: val_score,
                    "lr_head": float(sched.get_last_lr()[-1]),
                    "seconds": round(time.perf_counter() - t0, 2),
                    "train_images_per_second": round(n_seen / max(train_seconds, 1e-9), 2),
                }
            )
            logger.info("epoch %d %s: %s", self.epoch, phase, self.history[-1])
            if self._best_index() == len(self.history) - 1:
                self._best_state = _clone(model.state_dict())  # the validated weights
            self._event("after_validate")
            if ckpt_dir is not None and _ddp.is_main_process():
                self._save_checkpoint(ckpt_dir, phase, e + 1, opt, sched)
            try:
                self._event("after_epoch")
            except CancelFitException:
                return False
        return True

    # -- checkpoints --------------------------------------------------------------------------
    def _load_file(self, path: Path | None, *, weights_only: bool = True) -> Any:
        return load_file(path, self.backbone_.device, weights_only=weights_only)

    def _save_checkpoint(
        self, ckpt_dir: Path, phase: str, epoch_in_phase: int, opt: Any, sched: Any
    ) -> None:
        """`last.pt` after every epoch (atomically), and the best-by-validation weights."""
        is_best = self._best_index() == len(self.history) - 1
        write_checkpoint(
            ckpt_dir,
            checkpoint_state(self, phase, epoch_in_phase, opt, sched),
            {"model": self._best_state, "epoch": self.epoch} if is_best else None,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        """Carry on from a ``last.pt`` (callbacks' state is restored after ``before_fit``)."""
        self.backbone_.model.load_state_dict(state["model"])
        self.history = list(state["history"])
        self.epoch = int(state["epoch"])
        self.probe_val_score_ = state.get("probe_val_accuracy")  # its key in last.pt
        logger.info("resuming after epoch %d (%s)", self.epoch, state["phase"])

    # -- LR finder ----------------------------------------------------------------------------
    def lr_find(
        self,
        train: Sequence[Sample],
        classes: Sequence[str],
        *,
        start_lr: float = 1e-7,
        end_lr: float = 1.0,
        num_it: int = 60,
        frozen: bool = True,
    ) -> LRFindResult:
        """Exponential LR sweep (Smith 2015, fastai's ``lr_find``) on `train`, weights restored after.

        Trains with the LR multiplied by a constant factor each step, from `start_lr` to `end_lr`
        over `num_it` steps (stopping once the loss exceeds 4x its minimum), on the head only when
        `frozen` (the phase whose LR it informs), else on the whole network.
        """
        if not 0 < start_lr < end_lr:
            raise InvalidParameterError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
        if num_it < 5:
            raise InvalidParameterError(f"num_it must be >= 5, got {num_it}")
        cfg = self.config
        _seed_everything(cfg.seed)
        self._setup(classes)
        short = preload_size(self.size_)
        tr = decode_all(train, max_pixels=cfg.max_pixels, progress=self.progress, short_side=short)
        y = targets(train, tr.kept, self.classes_, multi_label=False)
        loader = torch.utils.data.DataLoader(
            ImageSet(tr.train, y, self._train_transform(tr.train)[0]),
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(cfg.seed),
            drop_last=len(y) > cfg.batch_size,
        )
        self.freeze_to(-1 if frozen else 0)
        opt, _ = self._optimizer(start_lr, 1.0, layer_decay=False)
        self._set_train_mode()
        return sweep(
            self.backbone_.model,
            loader,
            opt,
            device=self.backbone_.device,
            start_lr=start_lr,
            end_lr=end_lr,
            num_it=num_it,
            label_smoothing=cfg.label_smoothing,
            progress=self.progress,
        )

    # -- the whole recipe ---------------------------------------------------------------------
    def fit(
        self,
        train: Sequence[Sample],
        val: Sequence[Sample],
        classes: Sequence[str],
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        on_error: str = "skip",
        multi_label: bool = False,
    ) -> FinetuneResult:
        """Fine-tune on `train`, validating on `val` after every epoch; keep the best weights.

        Args:
            train, val: labelled samples (labels among `classes`).
            classes: class names; the head's outputs follow this order.
            checkpoint_dir: where ``last.pt``/``best.pt`` go (None: no checkpoints, no resume).
            resume: continue from ``checkpoint_dir/last.pt`` if it exists.
            on_error: ``"skip"`` broken images (listed in `failures_`) or ``"raise"`` the first.
            multi_label: samples carry label sets (`Sample.labels`): sigmoid head, BCE loss,
                model selection on validation mAP.

        Raises:
            DatasetError: a class has no decodable training image, or no validation image decodes.
        """
        t_start = time.perf_counter()
        cfg = self.config
        self.progress = self.progress and _ddp.is_main_process()  # DDP: rank 0 reports
        if multi_label and cfg.class_balance == "sampler":
            raise InvalidParameterError(
                "class_balance='sampler' is for single-label data; use 'weights'"
            )
        self.multi_label_ = multi_label
        self.score_key_ = "val_map" if multi_label else "val_accuracy"
        _seed_everything(cfg.seed)
        self._setup(classes)
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.fingerprint_ = {
            "data": sorted(s.path for s in train),
            "val": sorted(s.path for s in val),
            "config": asdict(cfg),
            "classes": self.classes_,
        }
        loaders, y_train, y_val = self._loaders(train, val, on_error)
        self.loss_func = self._loss(y_train)
        train_eval_all = loaders["train_eval"]  # AdaBN sees every image on every rank
        self.loaders_ = {k: _ddp.shard_loader(v, train=k == "train") for k, v in loaders.items()}

        last = ckpt_dir / CHECKPOINT if resume and ckpt_dir is not None else None
        self.resume_state_ = resume_state = self._load_file(last, weights_only=False)
        if resume_state is not None and last is not None:
            check_resumable(resume_state, self.fingerprint_, last)
            self._restore(resume_state)
        else:
            if cfg.adapt_bn:
                n_bn = reestimate_bn(
                    self.backbone_.model, (x for x, _ in train_eval_all), self.backbone_.device
                )
                logger.info("AdaBN: BatchNorm statistics re-estimated on %d training images", n_bn)
            self.probe_val_score_ = (
                init_head_from_probe(
                    self.backbone_.model,
                    self.backbone_.device,
                    self.classes_,
                    multi_label=self.multi_label_,
                    train_loader=self.loaders_["train_eval"],
                    y_train=y_train,
                    val_loader=self.loaders_["val"],
                    y_val=y_val,
                )
                if cfg.head_init == "probe"
                else None
            )
        self._best_state: State | None = None
        if resume_state is not None and ckpt_dir is not None:
            best_ckpt = self._load_file(ckpt_dir / BEST)
            if best_ckpt is not None:
                self._best_state = best_ckpt["model"]

        self.cbs_ = with_built_ins(self.callbacks, cfg, ckpt_dir, progress=self.progress)
        self.wise_alpha_, self.wise_scores_ = 1.0, None
        self._event("before_fit")
        if resume_state is not None:
            for cb in self.cbs_:
                cb.load_state_dict(resume_state)
        completed = self._run_phases(ckpt_dir, resume_state)
        # keep the best epoch's weights (selected on validation, reported as such)
        best = self._best_index()
        if self._best_state is None and ckpt_dir is not None:
            best_ckpt = self._load_file(ckpt_dir / BEST)
            self._best_state = best_ckpt["model"] if best_ckpt is not None else None
        if self._best_state is not None:
            self.backbone_.model.load_state_dict(self._best_state)
        self._event("after_fit")
        self.backbone_.model.eval()
        ips = [h["train_images_per_second"] for h in self.history]
        self.result_ = FinetuneResult(
            history=self.history,
            best_epoch=self.history[best]["epoch"],
            best_val_accuracy=self.history[best][self.score_key_],
            probe_val_score=self.probe_val_score_,
            wise_alpha=self.wise_alpha_,
            wise_scores=self.wise_scores_,
            stopped_early=not completed,
            seconds=round(time.perf_counter() - t_start, 2),
            train_images_per_second=float(np.median(ips)) if ips else 0.0,
            precision="bf16" if self.bf16_ else "fp32",
        )
        return self.result_

    def _run_phases(self, ckpt_dir: Path | None, resume_state: dict[str, Any] | None) -> bool:
        """The head alone (``freeze_epochs``), then from ``freeze_to`` on; a resumed run skips
        what ``last.pt`` says is done. False when a callback stopped training."""
        cfg = self.settings_
        lr = float(cfg.lr or 0.0)
        phases = [
            ("frozen", cfg.freeze_epochs, lr, 1.0, -1),
            ("unfrozen", cfg.epochs, lr / 2, cfg.lr_mult, cfg.freeze_to),
        ]
        order = [p[0] for p in phases]
        for phase, n_epochs, lr, mult, first in phases:
            if n_epochs == 0:
                continue
            start, state = 0, None
            if resume_state is not None:
                done_phase = resume_state["phase"]
                if order.index(phase) < order.index(done_phase):
                    continue
                if phase == done_phase:
                    start = int(resume_state["epoch_in_phase"])
                    if start >= n_epochs:
                        continue
                    state = resume_state
            self.freeze_to(first)
            if not self._run_phase(phase, n_epochs, lr, mult, ckpt_dir, start, state):
                return False
        return True
