"""`run_finetune`: fine-tune a backbone, then `finish_finetune` (predict the held-out images,
calibrate or tune thresholds, evaluate) and save model, metrics and report.

`finish_finetune` is also the service's finishing sequence (one home for it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from transferlab._internal.deprecation import warn_once
from transferlab._internal.rundir import prepare_out
from transferlab.data import Dataset, Sample, label_matrix
from transferlab.evaluate import EvalReport, evaluate_predictions
from transferlab.exceptions import InvalidParameterError
from transferlab.pipeline._domain import load_target, resolve_remedy, styled_samples
from transferlab.pipeline._results import FLATTEN, OMIT_NONE, Metrics, RunResult
from transferlab.pipeline._shared import (
    ClassifierMetrics,
    DataSource,
    MultiLabelScores,
    calibrate,
    check_choice,
    eval_block,
    leakage_note,
    resolve_dataset,
    skipped_rows,
)
from transferlab.pipeline._views import training_views

__all__ = [
    "FinetuneMetrics",
    "FinetuneRunConfig",
    "FinishedFinetune",
    "MultiLabelFinetuneMetrics",
    "advice_probe_vs_finetune",
    "finetune",
    "finetuned_embedding",
    "finish_finetune",
    "run_finetune",
    "tie_margin",
]


#: the remedies a fine-tune applies (the others learn on frozen features: `fit`)
FINETUNE_REMEDIES = ("auto", "none", "style")
#: share of training images the style remedy renders, when ``finetune.style`` is 0
STYLE_SHARE = 0.5
STYLE_ADVICE = (
    "The epoch was chosen on the validation images together with their line and greyscale "
    "renderings (the history's val figures), so the probe comparison there is on that mix; "
    "`transferlab fit DATA --remedy style` is the probe with the same remedy, in seconds."
)


@dataclass(frozen=True)
class FinetuneRunConfig:
    """Everything `run_finetune` needs.

    Attributes:
        data: dataset folder or CSV (see `load_dataset`), or a `Dataset` already loaded.
        out: run directory (metrics.json, report.html, plots, checkpoints/, model/).
        finetune: the training settings (`transferlab.finetune.FinetuneConfig`; None: defaults).
        val_fraction: the split, when the data does not carry one (seeded by ``finetune.seed``).
        strict: stop at the first broken image instead of skipping it.
        resume: continue from ``out/checkpoints`` (the folder is then not checked for emptiness).
        overwrite: allow writing into a non-empty `out`.
        multi_label: CSV labels hold several ';'-separated labels.
        target: a folder of unlabelled images from the domain the model will be asked about;
            read (for its colour) by ``remedy="auto"``.
        remedy: ``auto`` (with `target`: the ``style`` remedy when the target is colourless,
            see `choose_remedy`), ``none``, or ``style`` (a share `STYLE_SHARE` of the training
            images drawn as line drawings or greyscale, unless ``finetune.style`` is set).
            CORAL and self-training are probe remedies (`transferlab fit`).
    """

    data: DataSource
    out: str | os.PathLike[str]
    finetune: Any = None
    val_fraction: float = 0.2
    strict: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    multi_label: bool = False
    target: str | None = None
    remedy: str = "auto"

    def __post_init__(self) -> None:
        check_choice(
            "remedy",
            self.remedy,
            FINETUNE_REMEDIES,
            wording=(
                "auto, none or style (coral and self-train are probe remedies: transferlab fit)"
            ),
        )

    def training(self) -> Any:
        """The `FinetuneConfig` (defaults when none was given)."""
        from transferlab.finetune import FinetuneConfig

        return self.finetune if self.finetune is not None else FinetuneConfig()

    def dataset(self) -> Dataset:
        """`data` as a `Dataset`: loaded (split seeded by the training seed) unless given."""
        return resolve_dataset(
            self.data,
            val_fraction=self.val_fraction,
            seed=self.training().seed,
            multi_label=self.multi_label,
        )


@dataclass(kw_only=True)
class FinetuneMetrics(ClassifierMetrics):
    """metrics.json of a single-label `finetune` (``probe_val_accuracy``: old name of
    ``probe_val_score``, written too)."""

    ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {"probe_val_score": ("probe_val_accuracy",)}

    method: str = "finetune"
    epochs: int
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    probe_val_score: float | None
    wise_alpha: float | None
    wise_scores: dict[str, float] | None
    advice: str
    history: list[dict[str, Any]]
    config: dict[str, Any]
    dataset: dict[str, Any]
    train_images_per_second: float | None
    distributed: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    seconds: float = 0.0
    test: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    calibration: dict[str, Any]
    #: --target / --remedy: the remedy, why, and which images it learnt from (`DomainNote`)
    domain: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)


@dataclass(kw_only=True)
class MultiLabelFinetuneMetrics(Metrics):
    """metrics.json of a multi-label `finetune` (``probe_val_map``: old name of
    ``probe_val_score``, written too)."""

    ALIASES: ClassVar[dict[str, tuple[str, ...]]] = {"probe_val_score": ("probe_val_map",)}

    multi_label: bool = True
    method: str = "finetune"
    scores: MultiLabelScores = field(metadata=FLATTEN)
    n_train: int
    n_val: int
    n_skipped: int
    skipped: list[dict[str, str]]
    classes: list[str]
    backbone: str
    layer: str = "finetuned"
    epochs: int
    epochs_run: int
    best_epoch: int | None
    probe_val_score: float | None
    history: list[dict[str, Any]]
    config: dict[str, Any]
    distributed: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    seconds: float = 0.0


@dataclass
class FinishedFinetune:
    """A fine-tuned model ready to save: calibrated (single-label: temperature fitted on the
    validation images) or thresholded (multi-label: per-label thresholds tuned on them).

    Attributes:
        model: the `FinetunedModel`, temperature or thresholds set.
        val: the validation report (`EvalReport`, or the multi-label report).
        test: the test report, when test images were given (single-label).
        calibration: `calibrate`'s summary (single-label) or None.
        val_index: positions in the validation samples of the images that decoded.
        skipped: (path, reason) of test images that did not decode.
        val_proba: the uncalibrated probabilities of those images (rows follow `val_index`).
    """

    model: Any
    val: Any
    test: EvalReport | None = None
    calibration: dict[str, Any] | None = None
    val_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    skipped: list[tuple[str, str]] = field(default_factory=list)
    val_proba: np.ndarray | None = None


def finish_finetune(
    tuner: Any,
    val: Sequence[Sample],
    test: Sequence[Sample] = (),
    *,
    multi_label: bool = False,
    progress: bool = True,
) -> FinishedFinetune:
    """The end of every fine-tune: `FinetunedModel.from_tuner`, predict the validation (and
    test) images, fit the temperature (or tune per-label thresholds) on validation, evaluate."""
    from transferlab.evaluate import evaluate_multilabel, tune_thresholds
    from transferlab.models import FinetunedModel

    model = FinetunedModel.from_tuner(tuner, progress=progress)
    classes = list(tuner.classes_)
    proba, index, _ = model.predict_proba_paths([s.path for s in val], calibrated=False)
    kept = [val[i] for i in index]
    if multi_label:
        y_val = label_matrix(kept, classes)
        model.thresholds = tune_thresholds(y_val, proba)
        report = evaluate_multilabel(y_val, proba, classes, model.thresholds)
        return FinishedFinetune(model, report, val_index=index, val_proba=proba)
    labels = np.asarray([s.label for s in kept], dtype=object)
    probas = {"val": (proba, labels)}
    reports = {"val": evaluate_predictions(list(labels), proba, classes)}
    skipped: list[tuple[str, str]] = []
    if test:
        t_proba, t_index, errors = model.predict_proba_paths(
            [s.path for s in test], calibrated=False
        )
        skipped = list(errors.items())
        t_labels = [test[i].label for i in t_index]
        probas["test"] = (t_proba, np.asarray(t_labels, dtype=object))
        reports["test"] = evaluate_predictions(t_labels, t_proba, classes)
    calibration = calibrate(probas, classes)
    model.temperature = calibration["temperature"]
    return FinishedFinetune(
        model, reports["val"], reports.get("test"), calibration, index, skipped, proba
    )


def tie_margin(n_val: int) -> float:
    """The smallest score difference that is not a tie on `n_val` images: one image, or half a
    point. A tie goes to the probe (seconds to train, nothing of the backbone to overfit)."""
    return max(0.005, 1.0 / max(n_val, 1))


def advice_probe_vs_finetune(probe_acc: float | None, finetuned_acc: float, n_val: int) -> str:
    """Plain-language verdict: is fine-tuning worth it over the linear probe on this data?

    A difference below one validation image (or 0.5 points) counts as a tie, and a tie goes to
    the probe: it trains in seconds and cannot overfit the backbone.
    """
    if probe_acc is None:
        return "No linear-probe baseline was measured (head_init='random')."
    margin = tie_margin(n_val)
    diff = finetuned_acc - probe_acc
    if diff > margin:
        return (
            f"Fine-tuning beats the linear probe by {100 * diff:.1f} points "
            f"({finetuned_acc:.3f} vs {probe_acc:.3f}): keep the fine-tuned model."
        )
    if diff < -margin:
        return (
            f"The linear probe is better here ({probe_acc:.3f} vs {finetuned_acc:.3f}): use "
            "`transferlab fit`. Fine-tuning overfits when data is small and gains little when it is "
            "close to ImageNet; if neither holds, `transferlab diagnose` shows where the features "
            "are off (for a mid-level optimum, `fit --layer stageN`)."
        )
    return (
        f"Fine-tuning and the linear probe tie ({finetuned_acc:.3f} vs {probe_acc:.3f}): prefer the "
        "probe (`transferlab fit`), which trains in seconds."
    )


def run_finetune(config: FinetuneRunConfig) -> RunResult:
    """Fine-tune a backbone on `config.data`, evaluate the best epoch, save model, metrics, report.

    `out` gets metrics.json (the keys of `fit`, plus ``epochs``, ``history``,
    ``probe_val_score`` and ``advice``), report.html, training_curves.png,
    confusion_matrix.png, checkpoints/ (for ``resume``) and model/.
    """
    return _run_finetune(config, prepare=True)


def _run_finetune(config: FinetuneRunConfig, *, prepare: bool) -> RunResult:
    """`run_finetune`; ``prepare=False`` when a launcher loaded the data and made `out` already."""
    from transferlab.distributed import ddp as _ddp
    from transferlab.finetune import FineTuner

    cfg = config.training()
    t0 = time.perf_counter()
    ds = config.dataset()
    out = Path(config.out)

    def make_out() -> None:
        if config.resume:
            out.mkdir(parents=True, exist_ok=True)
        else:
            prepare_out(out, config.overwrite)

    domain = None
    if config.target is not None or config.remedy == "style":
        if ds.multi_label:
            raise InvalidParameterError(
                "remedy/target: domain adaptation is for single-label data; drop --target and "
                "--remedy for --multi-label"
            )
        domain = resolve_remedy(
            config.remedy,
            [s.path for s in ds.train],
            load_target(config.target, cfg.seed) if config.target is not None else None,
            [s.path for s in ds.val],
            config.target,
            allowed=("none", "style"),
        )
        if domain.remedy == "style" and not cfg.style:
            cfg = replace(cfg, style=STYLE_SHARE)
        if domain.remedy == "style":
            domain.images_used += (
                "; the epoch chosen on the validation images and their renderings (history)"
            )
    if prepare:
        _ddp.on_main(make_out)  # DDP (torchrun): rank 0 checks and creates it, for all ranks
    select_on = ds.val
    if cfg.style:  # select the epoch on the val images drawn too (`styled_samples`)
        select_on = ds.val + _ddp.on_main(lambda: styled_samples(ds.val, out / "styled-val"))
    tuner = FineTuner(cfg, progress=config.progress)
    result = tuner.fit(
        ds.train,
        select_on,
        ds.classes,
        checkpoint_dir=out / "checkpoints",
        resume=config.resume,
        on_error="raise" if config.strict else "skip",
        multi_label=ds.multi_label,
    )
    if not _ddp.is_main_process():  # DDP: rank 0 evaluates and writes the files
        return RunResult(metrics={}, out=out)
    train_paths = {s.path for s in ds.train}
    n_train = len(ds.train) - sum(1 for e in tuner.failures_ if e.path in train_paths)
    skipped = [(e.path, e.reason) for e in tuner.failures_]
    done = finish_finetune(
        tuner,
        ds.val,
        () if ds.multi_label else ds.test,
        multi_label=ds.multi_label,
        progress=config.progress,
    )
    common = {
        "backbone": tuner.backbone_.name,
        "epochs": cfg.freeze_epochs + cfg.epochs,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "probe_val_score": result.probe_val_score,
        "history": result.history,
        "config": asdict(tuner.settings_),  # with the backbone family's defaults filled in
        "distributed": _ddp.run_info(cfg.batch_size).get("distributed"),
    }
    if ds.multi_label:
        return _save_multilabel(done, ds, out, {**common, "n_train": n_train}, skipped, t0)
    from transferlab.report import plot_training_curves, write_finetune_report

    skipped += done.skipped
    val = done.val
    metrics = FinetuneMetrics(
        **FinetuneMetrics.scores(
            val, n_train=n_train, test=done.test, skipped=skipped, classes=tuner.classes_
        ),
        **common,
        weights_sha256=tuner.backbone_.weights_sha256,
        layer="finetuned",
        stopped_early=result.stopped_early,
        wise_alpha=result.wise_alpha,
        wise_scores=result.wise_scores,
        advice=(
            advice_probe_vs_finetune(result.probe_val_score, val.accuracy, val.n)
            if select_on is ds.val
            else STYLE_ADVICE
        ),
        dataset={"path": ds.root, "source": ds.source, "split": ds.split_note},
        train_images_per_second=result.train_images_per_second,
        seconds=round(time.perf_counter() - t0, 3),
        test=eval_block(done.test) if done.test is not None else None,
        calibration=done.calibration,  # type: ignore[arg-type]
        leakage=leakage_note(ds, extractor=_probe_extractor(cfg)),
        domain=domain.to_dict() if domain is not None else None,
    )
    done.model.metrics = metrics.to_dict()
    model_dir = done.model.save(out / "model", overwrite=True)
    curves = plot_training_curves(
        result.history, out / "training_curves.png", baseline=result.probe_val_score
    )
    kept = [ds.val[i] for i in done.val_index]
    paths = [s.path for s in kept]
    images = training_views(
        out,
        paths,
        [s.label for s in kept],
        done.val_proba,  # type: ignore[arg-type]
        list(tuner.classes_),
        temperature=done.model.temperature,
        features=lambda rows: finetuned_embedding(done.model, [paths[i] for i in rows]),
        layer="the fine-tuned network's pre-logits",
    )
    cm_png = images[0][1]
    metrics.seconds = round(time.perf_counter() - t0, 3)
    report = write_finetune_report(out, ds, metrics, curves, images)
    return RunResult.written(
        metrics, out, model_dir=model_dir, report=report, confusion_png=cm_png, skipped=skipped
    )


def _probe_extractor(cfg: Any) -> Any:
    """The extractor whose cached features a `fit` with this backbone would have left."""
    from transferlab.features import FeatureExtractor

    return FeatureExtractor(cfg.backbone, weights=cfg.weights, layer="pre_logits", progress=False)


def finetuned_embedding(model: Any, paths: Sequence[str]) -> np.ndarray:
    """A `FinetunedModel`'s embedding of each image: the pooled input of its new head (timm's
    ``forward_head(forward_features(x), pre_logits=True)``, the backbone's ``pre_logits`` tap),
    one row per path; NaN for an image that does not decode. Computed only for the images the
    embedding map shows, so it costs at most one pass over the validation images."""
    import torch

    from transferlab.data import ImageFileDataset, collate_skipping_failures, eval_transform

    bb = model.backbone
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(list(paths), eval_transform(bb, model.image_size), None),
        batch_size=model.batch_size,
        collate_fn=collate_skipping_failures,
    )
    bb.model.eval()
    X: np.ndarray | None = None
    for idx, x, _ in loader:
        if x is None:
            continue
        x = x.to(bb.device).contiguous(memory_format=torch.channels_last)
        v = bb.forward_taps(x, ["pre_logits"])["pre_logits"].float().cpu().numpy()
        if X is None:
            X = np.full((len(paths), v.shape[1]), np.nan, dtype=np.float32)
        X[idx] = v
    return X if X is not None else np.full((len(paths), 1), np.nan, dtype=np.float32)


def _save_multilabel(
    done: FinishedFinetune,
    ds: Dataset,
    out: Path,
    common: dict[str, Any],
    skipped: list[tuple[str, str]],
    t0: float,
) -> RunResult:
    """Multi-label end of `run_finetune`: mAP/F1 metrics, model, curves of validation mAP."""
    from transferlab.report import plot_training_curves, write_finetune_multilabel_report

    metrics = MultiLabelFinetuneMetrics(
        scores=MultiLabelScores.of(done.val, ds.classes, done.model.thresholds),
        n_val=done.val.n,
        n_skipped=len(skipped),
        skipped=skipped_rows(skipped),
        classes=list(ds.classes),
        **common,
    )
    done.model.metrics = metrics.to_dict()
    model_dir = done.model.save(out / "model", overwrite=True)
    hist = [{**h, "val_accuracy": h["val_map"]} for h in metrics.history]
    curves = plot_training_curves(
        hist, out / "training_curves.png", baseline=metrics.probe_val_score
    )
    metrics.seconds = round(time.perf_counter() - t0, 3)
    report = write_finetune_multilabel_report(out, ds, metrics, curves)
    return RunResult.written(metrics, out, model_dir=model_dir, report=report, skipped=skipped)


def finetune(
    data: DataSource,
    out: str | os.PathLike[str],
    config: Any = None,
    *,
    val_fraction: float = 0.2,
    strict: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
    multi_label: bool = False,
) -> RunResult:
    """Deprecated: `run_finetune(FinetuneRunConfig(...))` (this name shadowed the module
    `transferlab.finetune`)."""
    warn_once("transferlab.pipeline.finetune", "transferlab.pipeline.run_finetune")
    return run_finetune(
        FinetuneRunConfig(
            data=dataset if dataset is not None else data,
            out=out,
            finetune=config,
            val_fraction=val_fraction,
            strict=strict,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            multi_label=multi_label,
        )
    )
