"""What `run_auto` is asked (`AutoConfig`), what it weighs (`Candidate`) and what it reports
(`AutoMetrics`, metrics.json: the keys of `fit`/`finetune` for the model kept, then the data
check, the decision log and the budget)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from transferlab.data import DEFAULT_MAX_PIXELS
from transferlab.exceptions import InvalidParameterError
from transferlab.pipeline._rank import DEFAULT_BACKBONES
from transferlab.pipeline._results import OMIT_NONE
from transferlab.pipeline._shared import (
    ClassifierMetrics,
    DataSource,
    ExtractorSettings,
    check_choice,
    check_min,
)

__all__ = ["METRICS", "AutoConfig", "AutoMetrics", "Candidate", "parse_budget"]

#: what candidates are compared by
METRICS = ("accuracy", "balanced_accuracy")


def parse_budget(text: str | float | int) -> float:
    """Seconds of a budget written ``20m``, ``90s``, ``1h``, ``1h30m`` or a plain number of
    seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = text.strip().lower().replace(" ", "")
        seconds, number = 0.0, ""
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        try:
            for ch in s:
                if ch in units:
                    seconds += float(number) * units[ch]
                    number = ""
                else:
                    number += ch
            if number:
                seconds += float(number)
        except ValueError:
            raise InvalidParameterError(
                f"budget must look like 20m, 90s, 1h30m or a number of seconds, got {text!r}"
            ) from None
        if not s:
            raise InvalidParameterError("budget is empty; give e.g. 20m")
    if seconds <= 0:
        raise InvalidParameterError(f"budget must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class AutoConfig(ExtractorSettings):
    """Everything `run_auto` needs; CLI flags map one-to-one onto these fields.

    Attributes:
        data: labelled single-label dataset (folder or CSV, see `load_dataset`), or a `Dataset`.
        out: run directory (metrics.json, report.html, plots, ``model/``).
        budget_s: wall-clock seconds for the whole run; a fine-tune whose measured-cost
            estimate does not fit the time left is not started, and one running stops at the
            epoch that would end past it. The probe always runs.
        backbones: the networks ranked (features, LogME, cross-validated probes).
        weights: their weights (``default``: packaged or hub; ``random``: tests).
        metric: what candidates are compared by (``accuracy`` or ``balanced_accuracy``).
        inner_val_fraction: share of the training images held out to compare fine-tunes with
            probes (every choice is made on the training images; ``val/`` is scored once).
        cv: folds of the probes' cross-validation on the training images.
        max_probes: backbone x layer pairs probed, the best by LogME.
        finetune: allow fine-tuning candidates (False: probes only).
        seed: seeds the inner split, the folds and training.
        val_fraction: the validation split, when the data does not carry one.
        target: a folder of unlabelled images from the domain the model will be asked about
            (issue 22); with it, ``remedy="auto"`` applies the measured-best remedy for the
            shift to the chosen probe (see `FitConfig.remedy`), and fine-tunes are not tried
            (their gains are measured on training-domain images).
        remedy: ``auto``, ``none``, ``style``, ``coral`` or ``self-train``, as for `fit`.
    """

    data: DataSource
    out: str | os.PathLike[str]
    budget_s: float = 1200.0
    backbones: tuple[str, ...] = DEFAULT_BACKBONES
    weights: str = "default"
    metric: str = "accuracy"
    inner_val_fraction: float = 0.2
    cv: int = 5
    max_probes: int = 4
    finetune: bool = True
    seed: int = 0
    val_fraction: float = 0.2
    batch_size: int = 32
    num_workers: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    no_cache: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool = True
    on_step: Callable[[str], None] | None = field(default=None, compare=False)
    target: str | None = None
    remedy: str = "auto"

    def __post_init__(self) -> None:
        from transferlab.diagnose._remedies import REMEDIES

        check_choice("metric", self.metric, METRICS)
        check_choice("remedy", self.remedy, REMEDIES)
        if not self.backbones:
            raise InvalidParameterError("backbones must name at least one backbone")
        if self.budget_s <= 0:
            raise InvalidParameterError(f"budget_s must be positive, got {self.budget_s}")
        if not 0.05 <= self.inner_val_fraction <= 0.5:
            raise InvalidParameterError(
                f"inner_val_fraction must be in [0.05, 0.5], got {self.inner_val_fraction}"
            )
        check_min("cv", self.cv, 2)
        check_min("max_probes", self.max_probes, 1)
        check_min("batch_size", self.batch_size, 1)


@dataclass
class Candidate:
    """One line of the decision log: a model auto considered.

    Attributes:
        name: e.g. ``probe efficientnet_lite2/pre_logits`` or ``finetune lp-ft-wise``.
        kind: ``probe`` or ``finetune``.
        backbone, layer: the network and (probes) the tap read.
        recipe: (fine-tunes) the recipe name; settings: its `FinetuneConfig` fields.
        logme: (probes) LogME of the training features.
        cv_score: (probes) cross-validated score on the training images.
        inner_score: score on the inner validation images (held out of the training images).
        start_score: (fine-tunes) what its gain is measured from, on the same inner validation
            images: the better of the probe its head started from (at the fine-tune's input
            size) and its backbone's pre_logits probe at the native size.
        expected_score: (fine-tunes) what it is compared with the probes' cross-validated
            scores by: the cross-validated score of its backbone's pre_logits probe plus its
            gain over `start_score`. Both terms of the gain are scored on the same images, so
            the noise of a small inner split cancels in it.
        estimated_s: (fine-tunes) the cost estimated before starting, from measured step time.
        seconds: what it took (0 when not run).
        status: ``chosen``, ``kept`` (run, not best), ``dropped`` (not run) or ``failed``.
        why: the reason for the status, with its numbers.
    """

    name: str
    kind: str
    backbone: str
    layer: str | None = None
    recipe: str | None = None
    settings: dict[str, Any] | None = None
    logme: float | None = None
    cv_score: float | None = None
    inner_score: float | None = None
    start_score: float | None = None
    expected_score: float | None = None
    estimated_s: float | None = None
    seconds: float = 0.0
    status: str = "dropped"
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(kw_only=True)
class AutoMetrics(ClassifierMetrics):
    """metrics.json of `auto`: the kept model's validation figures (as `fit`/`finetune`
    write them, so `predict`, `evaluate` and `export` read the model as theirs), then how it
    was chosen."""

    method: str = "auto"
    chosen: dict[str, Any]
    metric: str
    data_check: dict[str, Any]
    shift: dict[str, Any]
    candidates: list[dict[str, Any]]
    images_used: dict[str, str]
    budget: dict[str, Any]
    dataset: dict[str, Any]
    calibration: dict[str, Any]
    seconds: float = 0.0
    test: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    #: --target / --remedy: the remedy, why, and which images it learnt from (`DomainNote`)
    domain: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    #: no --target, but val/ is colourless drawings of colour photos: the remedy to try
    remedy_advice: str | None = field(default=None, metadata=OMIT_NONE)
