"""`fit`: dataset -> features -> linear probe -> held-out metrics -> saved model + report.

The CLI's `fit` and `demo` and the service all call `fit(FitConfig(...))`; nothing here prints.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.json import json_default as _json_default
from transferlab._internal.rundir import prepare_out as _prepare_out
from transferlab.backbones import POOLS
from transferlab.data import DEFAULT_MAX_PIXELS, Dataset, load_dataset
from transferlab.evaluate import EvalReport, evaluate_predictions
from transferlab.exceptions import DatasetError, InvalidParameterError
from transferlab.features import FeatureExtractor
from transferlab.models import MAX_TRAIN_INDEX, TransferModel
from transferlab.probe import CLASSIFIERS, LinearProbe

__all__ = [
    "FitConfig",
    "FitResult",
    "advice_probe_vs_finetune",
    "calibrate",
    "curve_run",
    "embed_run",
    "evaluate_run",
    "finetune",
    "fit",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Everything `fit` needs; CLI flags map one-to-one onto these fields.

    Attributes:
        data: dataset folder or CSV (see `load_dataset`).
        out: run directory for metrics.json, report.html, the confusion matrix and ``model/``.
        backbone, layer, pool, weights: the feature extractor (see `FeatureExtractor`).
        classifier, C, class_weight: the probe (see `LinearProbe`).
        val_fraction, seed: the split, when the data does not carry one.
        strict: stop at the first broken image instead of skipping it.
        batch_size, num_workers, device: extraction settings.
        cache_dir: feature cache folder (None: the default); ``no_cache`` turns caching off.
        max_pixels: decompression-bomb limit per image.
        overwrite: allow writing into a non-empty `out`.
    """

    data: str
    out: str
    backbone: str = "efficientnet_lite0"
    layer: str = "pre_logits"
    pool: str = "avg"
    weights: str = "default"
    classifier: str = "logreg"
    C: float | str = 1.0
    class_weight: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    strict: bool = False
    batch_size: int = 32
    num_workers: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    no_cache: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool = True
    multi_label: bool = False
    adapt_bn: bool = False

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise InvalidParameterError(
                f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}"
            )
        if self.classifier not in CLASSIFIERS:
            raise InvalidParameterError(
                f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise InvalidParameterError(
                f"val_fraction must be between 0 and 1, got {self.val_fraction}"
            )
        if self.class_weight not in (None, "balanced"):
            raise InvalidParameterError(
                f"class_weight must be None or 'balanced', got {self.class_weight!r}"
            )
        if self.batch_size < 1:
            raise InvalidParameterError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class FitResult:
    """What `fit` produced: metrics (as written to metrics.json) and where the files are."""

    metrics: dict[str, Any]
    out: Path
    model_dir: Path
    report: Path
    confusion_png: Path | None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "out": str(self.out),
            "model_dir": str(self.model_dir),
            "report": str(self.report),
            "confusion_png": str(self.confusion_png) if self.confusion_png else None,
        }



def fit(config: FitConfig, dataset: Dataset | None = None) -> FitResult:
    """Extract features, fit a linear probe, evaluate on the held-out split, save everything.

    Broken images are skipped and listed (``metrics["skipped"]``) unless ``config.strict``, which
    raises `ImageLoadError` on the first one.

    Raises:
        DatasetError: the data cannot be used (see `load_dataset`), or skipping broken images left a
            class with no training image.
        ImageLoadError: with ``strict=True``, the first broken image.
    """
    t0 = time.perf_counter()
    ds = (
        dataset
        if dataset is not None
        else load_dataset(
            config.data,
            val_fraction=config.val_fraction,
            seed=config.seed,
            multi_label=config.multi_label,
        )
    )
    out = Path(config.out)
    _prepare_out(out, config.overwrite)
    cache: Any = False if config.no_cache else (config.cache_dir or True)
    fx = FeatureExtractor(
        config.backbone,
        layer=config.layer,
        pool=config.pool,
        weights=config.weights,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        device=config.device,
        cache=cache,
        progress=config.progress,
        max_pixels=config.max_pixels,
    ).fit()
    adabn_images = 0
    if config.adapt_bn:  # AdaBN on the training images; the model keeps the adapted backbone
        from transferlab.diagnose import adapt_bn, image_batches

        counter = [0]
        fx.backbone_ = adapt_bn(
            fx.backbone_,
            image_batches(
                fx.backbone_,
                [s.path for s in ds.train],
                batch_size=config.batch_size,
                max_pixels=config.max_pixels,
            ),
            progress=lambda k: counter.__setitem__(0, counter[0] + k),
        )
        fx.backbone = fx.backbone_
        adabn_images = counter[0]
    t_load = time.perf_counter()

    splits = {"train": ds.train, "val": ds.val, "test": ds.test}
    all_samples = [s for name in ("train", "val", "test") for s in splits[name]]
    owner = [name for name in ("train", "val", "test") for _ in splits[name]]
    res = fx.extract([s.path for s in all_samples], on_error="raise" if config.strict else "skip")
    t_extract = time.perf_counter()
    X_all = res.features[config.layer]
    by_split: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in ("train", "val", "test"):
        rows = [r for r, i in enumerate(res.index) if owner[i] == name]
        labels = np.asarray([all_samples[res.index[r]].label for r in rows], dtype=object)
        by_split[name] = (X_all[rows], labels)
    skipped = [(e.path, e.reason) for e in res.failures]
    if ds.multi_label:
        rows_of = {
            name: [r for r, i in enumerate(res.index) if owner[i] == name] for name in splits
        }
        Y = {
            name: ds.label_matrix([all_samples[res.index[r]] for r in rows])
            for name, rows in rows_of.items()
        }
        X = {name: X_all[rows] for name, rows in rows_of.items()}
        return _fit_multilabel(
            config, ds, fx, X, Y, skipped, res.n_cached, out, t0, t_load, t_extract
        )

    Xtr, ytr = by_split["train"]
    missing = sorted(set(ds.classes) - set(ytr))
    if missing:
        raise DatasetError(
            f"after skipping {len(skipped)} broken images, class(es) {', '.join(missing)} have no "
            "training image left; fix or add images"
        )
    if len(by_split["val"][1]) == 0:
        raise DatasetError(
            f"after skipping {len(skipped)} broken images, no validation image is left"
        )
    probe = LinearProbe(
        classifier=config.classifier, C=config.C, class_weight=config.class_weight
    ).fit(Xtr, ytr)
    t_probe = time.perf_counter()

    reports: dict[str, EvalReport] = {}
    probas: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in ("val", "test"):
        X, y = by_split[name]
        if len(y):
            probas[name] = (probe.predict_proba(X), y)
            reports[name] = evaluate_predictions(y, probas[name][0], probe.classes_)
    calibration = calibrate(probas, [str(c) for c in probe.classes_])
    t_eval = time.perf_counter()
    val = reports["val"]
    metrics: dict[str, Any] = {
        "accuracy": val.accuracy,
        "balanced_accuracy": val.balanced_accuracy,
        "log_loss": val.log_loss,
        "n_train": len(ytr),
        "n_val": val.n,
        "n_test": reports["test"].n if "test" in reports else 0,
        "n_skipped": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "classes": [str(c) for c in probe.classes_],
        "per_class": val.per_class,
        "macro": val.macro,
        "confusion": val.confusion,
        "backbone": fx.backbone_.name,
        "weights_sha256": fx.backbone_.weights_sha256,
        "layer": config.layer,
        "pool": config.pool,
        "classifier": config.classifier,
        "C": probe.C_,
        "dataset": {
            "path": ds.root,
            "source": ds.source,
            "split": ds.split_note,
            "n_ignored": len(ds.ignored),
        },
        "n_cached": res.n_cached,
        "adapt_bn": {"images": adabn_images} if config.adapt_bn else None,
        "seconds": round(time.perf_counter() - t0, 3),
        "stage_seconds": {
            "load_backbone": round(t_load - t0, 3),
            "extract": round(t_extract - t_load, 3),
            "probe": round(t_probe - t_extract, 3),
            "evaluate": round(t_eval - t_probe, 3),
        },
        "extract_images_per_second": round(
            (len(all_samples) - res.n_cached) / max(t_extract - t_load, 1e-9), 2
        ),
    }
    if "test" in reports:
        t = reports["test"]
        metrics["test"] = {
            "accuracy": t.accuracy,
            "balanced_accuracy": t.balanced_accuracy,
            "log_loss": t.log_loss,
            "n": t.n,
            "per_class": t.per_class,
            "confusion": t.confusion,
        }

    metrics["calibration"] = calibration
    model = TransferModel(fx, probe, metrics)
    model.temperature = calibration["temperature"]
    if len(ytr) <= MAX_TRAIN_INDEX:
        train_rows = [r for r, i in enumerate(res.index) if owner[i] == "train"]
        model.train_index = {
            "X": Xtr,
            "labels": [str(v) for v in ytr],
            "paths": [all_samples[res.index[r]].path for r in train_rows],
        }
    model_dir = model.save(out / "model", overwrite=config.overwrite)
    from transferlab.report import plot_confusion_matrix

    cm_png = plot_confusion_matrix(
        val.confusion,
        val.classes,
        out / "confusion_matrix.png",
        title=f"validation: accuracy {val.accuracy:.3f} (n={val.n})",
    )
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    report = _write_fit_report(out, ds, metrics, cm_png, config)
    logger.info("fit done: accuracy %.4f on %d validation images", val.accuracy, val.n)
    return FitResult(
        metrics=metrics,
        out=out,
        model_dir=model_dir,
        report=report,
        confusion_png=cm_png,
        skipped=skipped,
    )


def _write_fit_report(
    out: Path, ds: Dataset, m: dict[str, Any], cm_png: Path, config: FitConfig
) -> Path:
    from transferlab.report import html_table, write_html_report

    summary = {
        "validation accuracy": m["accuracy"],
        "balanced accuracy": m["balanced_accuracy"],
        "log loss": m["log_loss"],
        **({"test accuracy": m["test"]["accuracy"]} if "test" in m else {}),
        "backbone / layer": f"{m['backbone']} / {m['layer']} ({m['pool']} pool)",
        "probe": f"{m['classifier']} (C={m['C']:.3g})",
        "images": f"{m['n_train']} train, {m['n_val']} val"
        + (f", {m['n_test']} test" if m.get("n_test") else ""),
        "skipped (broken) images": m["n_skipped"],
        "calibration": f"temperature {m['calibration']['temperature']:.3g}; validation ECE "
        f"{m['calibration']['val']['ece_before']:.4f} -> {m['calibration']['val']['ece_after']:.4f}",
        "time": f"{m['seconds']:.1f} s (extraction {m['stage_seconds']['extract']:.1f} s, {m['n_cached']} from cache)",
    }
    per_class = html_table(
        ["class", "precision", "recall", "f1", "support"],
        [
            [c, v["precision"], v["recall"], v["f1"], v["support"]]
            for c, v in m["per_class"].items()
        ],
    )
    counts = Counter(s.label for s in ds.train)
    data_html = f"<p>{html.escape(ds.root)} — {html.escape(ds.split_note)}</p>" + html_table(
        ["class", "train images"], [[c, counts.get(c, 0)] for c in ds.classes]
    )
    sections = [("Per-class metrics (validation)", per_class), ("Data", data_html)]
    if m["skipped"]:
        rows = [[s["path"], s["reason"]] for s in m["skipped"]]
        sections.insert(
            0,
            (
                "Skipped images",
                "<div class='warn'>These files could not be used and were left out.</div>"
                + html_table(["file", "reason"], rows),
            ),
        )
    cmd = f"transferlab predict {os.fspath(out / 'model')} IMAGE..."
    sections.append(("Use the model", f"<p><code>{html.escape(cmd)}</code></p>"))
    return write_html_report(
        out / "report.html",
        title=f"transferlab fit — {Path(ds.root).name}",
        summary=summary,
        sections=sections,
        images=[("Confusion matrix (validation)", cm_png)],
    )


def calibrate(
    probas: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]
) -> dict[str, Any]:
    """Fit temperature scaling on the validation probabilities; ECE and log loss before/after on
    validation (where T was fitted: optimistic) and on test when there is one (honest)."""
    from sklearn.metrics import log_loss

    from transferlab.evaluate import TemperatureScaler, expected_calibration_error

    index = {c: i for i, c in enumerate(classes)}
    proba, labels = probas["val"]
    y = np.array([index[str(v)] for v in labels])
    ts = TemperatureScaler().fit(proba, y)
    out: dict[str, Any] = {"temperature": ts.temperature_, "fitted_on": "validation"}
    for name, (p, lab) in probas.items():
        yy = np.array([index[str(v)] for v in lab])
        after = ts.transform(p)
        out[name] = {
            "ece_before": expected_calibration_error(p, yy),
            "ece_after": expected_calibration_error(after, yy),
            "log_loss_before": float(
                log_loss(yy, np.clip(p, 1e-15, 1), labels=range(len(classes)))
            ),
            "log_loss_after": float(
                log_loss(yy, np.clip(after, 1e-15, 1), labels=range(len(classes)))
            ),
        }
    return out


def _eval_block(report: EvalReport) -> dict[str, Any]:
    return {
        "accuracy": report.accuracy,
        "balanced_accuracy": report.balanced_accuracy,
        "log_loss": report.log_loss,
        "n": report.n,
        "per_class": report.per_class,
        "confusion": report.confusion,
    }


def advice_probe_vs_finetune(probe_acc: float | None, finetuned_acc: float, n_val: int) -> str:
    """Plain-language verdict: is fine-tuning worth it over the linear probe on this data?

    A difference below one validation image (or 0.5 points) counts as a tie, and a tie goes to
    the probe: it trains in seconds and cannot overfit the backbone.
    """
    if probe_acc is None:
        return "No linear-probe baseline was measured (head_init='random')."
    margin = max(0.005, 1.0 / max(n_val, 1))
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


def finetune(
    data: str | os.PathLike[str],
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
) -> FitResult:
    """Fine-tune a backbone on `data`, evaluate the best epoch, save model, metrics and report.

    `out` gets metrics.json (the keys of `fit`, plus ``epochs``, ``history``,
    ``probe_val_accuracy`` and ``advice``), report.html, training_curves.png,
    confusion_matrix.png, checkpoints/ (for ``resume``) and model/.
    """
    from transferlab.distributed import ddp as _ddp
    from transferlab.finetune import FinetuneConfig, FineTuner
    from transferlab.models import FinetunedModel
    from transferlab.report import plot_confusion_matrix, plot_training_curves

    cfg = config or FinetuneConfig()
    t0 = time.perf_counter()
    ds = (
        dataset
        if dataset is not None
        else load_dataset(data, val_fraction=val_fraction, seed=cfg.seed, multi_label=multi_label)
    )
    out = Path(out)

    def prepare() -> None:
        if resume:
            out.mkdir(parents=True, exist_ok=True)
        else:
            _prepare_out(out, overwrite)

    _ddp.on_main(prepare)  # DDP (torchrun): rank 0 checks and creates it, for all ranks
    tuner = FineTuner(cfg, progress=progress)
    result = tuner.fit(
        ds.train,
        ds.val,
        ds.classes,
        checkpoint_dir=out / "checkpoints",
        resume=resume,
        on_error="raise" if strict else "skip",
        multi_label=ds.multi_label,
    )
    if not _ddp.is_main_process():  # DDP: rank 0 evaluates and writes the files
        return FitResult({}, out, out / "model", out / "report.html", None)
    bb = tuner.backbone_
    if ds.multi_label:
        return _finish_multilabel_finetune(tuner, result, ds, out, cfg, t0, progress)
    model = FinetunedModel.from_tuner(tuner, progress=progress)
    reports: dict[str, EvalReport] = {}
    probas: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped = [(e.path, e.reason) for e in tuner.failures_]
    for name, samples in (("val", ds.val), ("test", ds.test)):
        if not samples:
            continue
        proba, index, errors = model.predict_proba_paths(
            [s.path for s in samples], calibrated=False
        )
        if name == "test":
            skipped += list(errors.items())
        labels = [samples[i].label for i in index]
        probas[name] = (proba, np.asarray(labels, dtype=object))
        reports[name] = evaluate_predictions(labels, proba, tuner.classes_)
    calibration = calibrate(probas, tuner.classes_)
    model.temperature = calibration["temperature"]
    val = reports["val"]
    metrics: dict[str, Any] = {
        "accuracy": val.accuracy,
        "balanced_accuracy": val.balanced_accuracy,
        "log_loss": val.log_loss,
        "n_train": int(
            len(ds.train)
            - len([e for e in tuner.failures_ if e.path in {s.path for s in ds.train}])
        ),
        "n_val": val.n,
        "n_test": reports["test"].n if "test" in reports else 0,
        "n_skipped": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "classes": tuner.classes_,
        "per_class": val.per_class,
        "macro": val.macro,
        "confusion": val.confusion,
        "backbone": bb.name,
        "weights_sha256": bb.weights_sha256,
        "layer": "finetuned",
        "method": "finetune",
        "epochs": cfg.freeze_epochs + cfg.epochs,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "probe_val_accuracy": result.probe_val_accuracy,
        "wise_alpha": result.wise_alpha,
        "wise_scores": result.wise_scores,
        "advice": advice_probe_vs_finetune(result.probe_val_accuracy, val.accuracy, val.n),
        "history": result.history,
        "config": asdict(cfg),
        "dataset": {"path": ds.root, "source": ds.source, "split": ds.split_note},
        "train_images_per_second": result.train_images_per_second,
        **_ddp.run_info(cfg.batch_size),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if "test" in reports:
        metrics["test"] = _eval_block(reports["test"])
    metrics["calibration"] = calibration
    model.metrics = metrics
    model_dir = model.save(out / "model", overwrite=True)
    curves = plot_training_curves(
        result.history, out / "training_curves.png", baseline=result.probe_val_accuracy
    )
    cm_png = plot_confusion_matrix(
        val.confusion,
        val.classes,
        out / "confusion_matrix.png",
        title=f"validation: accuracy {val.accuracy:.3f} (n={val.n})",
    )
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    report = _write_finetune_report(out, ds, metrics, [curves, cm_png])
    return FitResult(
        metrics=metrics,
        out=out,
        model_dir=model_dir,
        report=report,
        confusion_png=cm_png,
        skipped=skipped,
    )


def _write_finetune_report(out: Path, ds: Dataset, m: dict[str, Any], images: list[Path]) -> Path:
    from transferlab.report import html_table, write_html_report

    cfg = m["config"]
    summary = {
        "validation accuracy (final model)": m["accuracy"],
        "linear probe, same validation images": m["probe_val_accuracy"]
        if m["probe_val_accuracy"] is not None
        else "n/a",
        "balanced accuracy": m["balanced_accuracy"],
        **({"test accuracy": m["test"]["accuracy"]} if "test" in m else {}),
        "backbone": m["backbone"],
        "schedule": f"{cfg['freeze_epochs']} frozen + {cfg['epochs']} unfrozen epochs, lr {cfg['lr']:g}, "
        f"one-cycle, BN {cfg['bn_policy']}, head from {cfg['head_init']}",
        "best epoch": f"{m['best_epoch']} of {m['epochs_run']} (selected on validation)",
        "WiSE-FT blend": (
            f"alpha {m['wise_alpha']:g} of the fine-tuned weights with the probe-initialised start "
            f"(validation accuracy per alpha: {', '.join(f'{a}: {v:.3f}' for a, v in m['wise_scores'].items())})"
            if m.get("wise_scores")
            else "off"
        ),
        "images": f"{m['n_train']} train, {m['n_val']} val"
        + (f", {m['n_test']} test" if m.get("n_test") else ""),
        "skipped (broken) images": m["n_skipped"],
        "time": f"{m['seconds']:.0f} s ({m['train_images_per_second']:.1f} train img/s)",
    }
    hist = html_table(
        ["epoch", "phase", "train loss", "val loss", "val accuracy", "seconds"],
        [
            [
                h["epoch"],
                h["phase"],
                h["train_loss"],
                h["val_loss"],
                h["val_accuracy"],
                h["seconds"],
            ]
            for h in m["history"]
        ],
    )
    per_class = html_table(
        ["class", "precision", "recall", "f1", "support"],
        [
            [c, v["precision"], v["recall"], v["f1"], v["support"]]
            for c, v in m["per_class"].items()
        ],
    )
    sections = [
        ("Verdict", f"<p>{html.escape(m['advice'])}</p>"),
        ("Epochs", hist),
        ("Per-class metrics (validation)", per_class),
    ]
    if m["skipped"]:
        sections.insert(
            1,
            (
                "Skipped images",
                html_table(["file", "reason"], [[s["path"], s["reason"]] for s in m["skipped"]]),
            ),
        )
    return write_html_report(
        out / "report.html",
        title=f"transferlab finetune — {Path(ds.root).name}",
        summary=summary,
        sections=sections,
        images=[("Training curves", images[0]), ("Confusion matrix (validation)", images[1])],
    )


def _per_label_table(per_label: dict[str, dict[str, float]]) -> str:
    from transferlab.report import html_table

    cols = ["average_precision", "precision", "recall", "f1", "threshold", "support"]
    return html_table(
        ["label", "AP", "precision", "recall", "f1", "threshold", "support"],
        [[c, *(v[k] for k in cols)] for c, v in per_label.items()],
    )


def _multilabel_block(val: Any, classes: Sequence[str], thresholds: np.ndarray) -> dict[str, Any]:
    """The metrics.json keys every multi-label run reports (fit and finetune alike)."""
    return {
        "accuracy": val.subset_accuracy,
        "mAP": val.mAP,
        "f1_micro": val.f1_micro,
        "f1_macro": val.f1_macro,
        "at_threshold_0.5": val.at_half,
        "thresholds": dict(zip(classes, np.asarray(thresholds).tolist(), strict=True)),
        "thresholds_note": "tuned on the validation split (F1 per label); at_threshold_0.5 is untuned",
        "per_label": val.per_label,
    }


def _fit_multilabel(
    config: FitConfig,
    ds: Dataset,
    fx: FeatureExtractor,
    X: dict[str, np.ndarray],
    Y: dict[str, np.ndarray],
    skipped: list[tuple[str, str]],
    n_cached: int,
    out: Path,
    t0: float,
    t_load: float,
    t_extract: float,
) -> FitResult:
    """Multi-label branch of `fit`: one-vs-rest probe, per-label thresholds tuned on validation."""
    from transferlab.evaluate import evaluate_multilabel, tune_thresholds
    from transferlab.probe import MultiLabelProbe

    if len(Y["val"]) == 0:
        raise DatasetError(
            f"after skipping {len(skipped)} broken images, no validation image is left"
        )
    missing = [c for c, n in zip(ds.classes, Y["train"].sum(0), strict=True) if n == 0]
    if missing:
        raise DatasetError(f"label(s) {', '.join(missing)} have no training image left")
    probe = MultiLabelProbe(
        C=float(config.C) if config.C != "auto" else 1.0, class_weight=config.class_weight
    ).fit(X["train"], Y["train"])
    t_probe = time.perf_counter()
    val_proba = probe.predict_proba(X["val"])
    probe.thresholds_ = tune_thresholds(Y["val"], val_proba)
    val = evaluate_multilabel(Y["val"], val_proba, ds.classes, probe.thresholds_)
    metrics: dict[str, Any] = {
        "multi_label": True,
        **_multilabel_block(val, ds.classes, probe.thresholds_),
        "n_train": len(Y["train"]),
        "n_val": val.n,
        "n_test": len(Y["test"]),
        "n_skipped": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "classes": list(ds.classes),
        "backbone": fx.backbone_.name,
        "weights_sha256": fx.backbone_.weights_sha256,
        "layer": config.layer,
        "pool": config.pool,
        "classifier": "logreg-ovr",
        "C": float(probe.C),
        "dataset": {"path": ds.root, "source": ds.source, "split": ds.split_note},
        "n_cached": n_cached,
        "stage_seconds": {
            "load_backbone": round(t_load - t0, 3),
            "extract": round(t_extract - t_load, 3),
            "probe": round(t_probe - t_extract, 3),
        },
        "seconds": 0.0,
    }
    if len(Y["test"]):
        t = evaluate_multilabel(
            Y["test"], probe.predict_proba(X["test"]), ds.classes, probe.thresholds_
        )
        metrics["test"] = {
            "subset_accuracy": t.subset_accuracy,
            "mAP": t.mAP,
            "f1_micro": t.f1_micro,
            "f1_macro": t.f1_macro,
            "per_label": t.per_label,
            "n": t.n,
        }
    model_dir = TransferModel(fx, probe, metrics, classes=ds.classes).save(
        out / "model", overwrite=config.overwrite
    )
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    from transferlab.report import write_html_report

    summary = {
        "validation mAP": val.mAP,
        "micro F1 (tuned thresholds)": val.f1_micro,
        "macro F1 (tuned thresholds)": val.f1_macro,
        "subset accuracy": val.subset_accuracy,
        "micro F1 at 0.5": val.at_half["f1_micro"],
        "backbone / layer": f"{fx.backbone_.name} / {config.layer}",
        "images": f"{metrics['n_train']} train, {val.n} val",
        "skipped (broken) images": len(skipped),
    }
    table = _per_label_table(val.per_label)
    report = write_html_report(
        out / "report.html",
        title=f"transferlab fit (multi-label) — {Path(ds.root).name}",
        summary=summary,
        sections=[("Per-label metrics (validation)", table)],
    )
    return FitResult(
        metrics=metrics,
        out=out,
        model_dir=model_dir,
        report=report,
        confusion_png=None,
        skipped=skipped,
    )


def _finish_multilabel_finetune(
    tuner: Any, result: Any, ds: Dataset, out: Path, cfg: Any, t0: float, progress: bool
) -> FitResult:
    """Multi-label end of `finetune`: thresholds tuned on validation, mAP/F1 metrics, save."""
    from transferlab.distributed import ddp as _ddp
    from transferlab.evaluate import evaluate_multilabel, tune_thresholds
    from transferlab.models import FinetunedModel
    from transferlab.report import plot_training_curves, write_html_report

    bb = tuner.backbone_
    model = FinetunedModel.from_tuner(tuner, progress=progress)
    proba, index, _ = model.predict_proba_paths([s.path for s in ds.val])
    y_val = ds.label_matrix([ds.val[i] for i in index])
    model.thresholds = tune_thresholds(y_val, proba)
    val = evaluate_multilabel(y_val, proba, ds.classes, model.thresholds)
    skipped = [(e.path, e.reason) for e in tuner.failures_]
    metrics: dict[str, Any] = {
        "multi_label": True,
        "method": "finetune",
        **_multilabel_block(val, ds.classes, model.thresholds),
        "n_train": len(ds.train)
        - sum(1 for e in tuner.failures_ if e.path in {s.path for s in ds.train}),
        "n_val": val.n,
        "n_skipped": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "classes": list(ds.classes),
        "backbone": bb.name,
        "layer": "finetuned",
        "epochs": cfg.freeze_epochs + cfg.epochs,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "probe_val_map": result.probe_val_accuracy,
        "history": result.history,
        "config": asdict(cfg),
        **_ddp.run_info(cfg.batch_size),
        "seconds": 0.0,
    }
    model.metrics = metrics
    model_dir = model.save(out / "model", overwrite=True)
    hist = [{**h, "val_accuracy": h["val_map"]} for h in result.history]
    curves = plot_training_curves(
        hist, out / "training_curves.png", baseline=result.probe_val_accuracy
    )
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    table = _per_label_table(val.per_label)
    report = write_html_report(
        out / "report.html",
        title=f"transferlab finetune (multi-label) — {Path(ds.root).name}",
        summary={
            "validation mAP": val.mAP,
            "micro F1 (tuned thresholds)": val.f1_micro,
            "macro F1": val.f1_macro,
            "linear probe mAP": result.probe_val_accuracy or "n/a",
            "backbone": bb.name,
            "images": f"{metrics['n_train']} train, {val.n} val",
        },
        sections=[("Per-label metrics (validation)", table)],
        images=[("Training curves (validation mAP)", curves)],
    )
    return FitResult(
        metrics=metrics,
        out=out,
        model_dir=model_dir,
        report=report,
        confusion_png=None,
        skipped=skipped,
    )


def _samples_to_evaluate(
    data: str | os.PathLike[str], split: str, multi_label: bool
) -> tuple[list[Any], str]:
    """The labelled images `evaluate` scores: a named split, or all of a dataset without splits."""
    from transferlab.data import Sample

    ds = load_dataset(data, multi_label=multi_label)
    explicit = ds.source == "imagefolder-split" or "CSV split column" in ds.split_note
    if split == "auto":
        split = ("test" if ds.test else "val") if explicit else "all"
    chosen: dict[str, list[Sample]] = {
        "train": ds.train,
        "val": ds.val,
        "test": ds.test,
        "all": [*ds.train, *ds.val, *ds.test],
    }
    if split not in chosen:
        raise InvalidParameterError(f"--split must be auto, train, val, test or all, got {split!r}")
    if not chosen[split]:
        raise DatasetError(f"{data} has no {split!r} images")
    return chosen[split], split


def evaluate_run(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str = "auto",
    threshold: float | None = None,
    chunk_size: int = 512,
    grid_size: int = 12,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Score a saved model on labelled images: metrics, calibration, confidence filtering,
    interpretation (most confused, top losses) and plots, in OUT/metrics.json and OUT/report.html.

    Images are predicted `chunk_size` at a time and only probabilities are kept, so memory grows
    with the number of images by a few floats each, not by feature vectors or pixels.
    """
    from transferlab.evaluate import (
        Interpretation,
        TemperatureScaler,
        accuracy_coverage,
        expected_calibration_error,
        top_k_accuracy,
    )
    from transferlab.models import load_model

    t0 = time.perf_counter()
    if threshold is not None and not 0 < threshold < 1:
        raise InvalidParameterError(f"--threshold must be between 0 and 1, got {threshold}")
    model = load_model(model_dir, progress=progress)
    samples, used_split = _samples_to_evaluate(data, split, model.multi_label)
    out = Path(out)
    _prepare_out(out, overwrite)
    classes = model.classes
    if not model.multi_label:
        unknown = sorted({s.label for s in samples} - set(classes))
        if unknown:
            raise DatasetError(
                f"{data} has classes the model does not know: {', '.join(unknown)} (model classes: {', '.join(classes)})"
            )
    raw_rows, kept_paths, kept_samples, errors = [], [], [], {}
    from tqdm.auto import tqdm

    for start in tqdm(
        range(0, len(samples), chunk_size),
        desc="evaluate",
        unit="chunk",
        disable=None if progress else True,
        leave=False,
    ):
        chunk = samples[start : start + chunk_size]
        proba, index, errs = model.predict_proba_paths([s.path for s in chunk], calibrated=False)
        errors.update(errs)
        raw_rows.append(proba.astype(np.float32))
        kept_samples.extend(chunk[i] for i in index)
    kept_paths = [s.path for s in kept_samples]
    raw = np.concatenate(raw_rows) if raw_rows else np.zeros((0, len(classes)), np.float32)
    if not len(raw):
        raise DatasetError(f"no image of {data} ({used_split}) could be read")
    skipped = [{"path": p, "reason": r} for p, r in errors.items()]
    if model.multi_label:
        return _evaluate_multilabel_run(
            model, kept_samples, raw, skipped, out, used_split, data, t0, grid_size
        )

    ts = TemperatureScaler(model.temperature)
    proba = ts.transform(raw.astype(np.float64))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[s.label] for s in kept_samples])
    rep = evaluate_predictions([s.label for s in kept_samples], proba, classes)
    interp = Interpretation(kept_paths, y, proba, classes)
    curve = accuracy_coverage(proba, y)
    metrics: dict[str, Any] = {
        "accuracy": rep.accuracy,
        "balanced_accuracy": rep.balanced_accuracy,
        "top_k_accuracy": {
            str(k): top_k_accuracy(y, proba, k) for k in (1, 3, 5) if k <= len(classes)
        },
        "log_loss": rep.log_loss,
        "per_class": rep.per_class,
        "macro": rep.macro,
        "micro": {"precision": rep.accuracy, "recall": rep.accuracy, "f1": rep.accuracy},
        "confusion": rep.confusion,
        "ece": expected_calibration_error(proba, y),
        "calibration": {
            "temperature": model.temperature,
            "ece_uncalibrated": expected_calibration_error(raw.astype(np.float64), y),
            "ece_calibrated": expected_calibration_error(proba, y),
        },
        "most_confused": [
            {"true": t, "predicted": p, "count": n} for t, p, n in interp.most_confused()
        ],
        "top_losses": interp.top_losses(grid_size),
        "accuracy_coverage": {
            f"{t:.2f}": {"coverage": float(c), "accuracy": float(a)}
            for t, c, a in zip(
                curve["threshold"][::10],
                curve["coverage"][::10],
                curve["accuracy"][::10],
                strict=True,
            )
        },
        "n": rep.n,
        "n_skipped": len(skipped),
        "skipped": skipped,
        "classes": classes,
        "split": used_split,
        "data": str(data),
        "model": str(model_dir),
    }
    if threshold is not None:
        keep = proba.max(1) >= threshold
        metrics["threshold"] = {
            "threshold": threshold,
            "kept": int(keep.sum()),
            "uncertain": int((~keep).sum()),
            "coverage": float(keep.mean()),
            "accuracy_kept": float((proba.argmax(1)[keep] == y[keep]).mean())
            if keep.any()
            else float("nan"),
        }
    images = _evaluation_plots(out, interp, proba, raw, y, rep, threshold, grid_size)
    images += _feature_views(model, interp, out, metrics)
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    _write_predictions_csv(out / "predictions.csv", interp)
    report = _write_evaluate_report(out, metrics, images)
    return FitResult(
        metrics=metrics,
        out=out,
        model_dir=Path(model_dir),
        report=report,
        confusion_png=images[0][1],
        skipped=[(s["path"], s["reason"]) for s in skipped],
    )


def _evaluation_plots(
    out: Path,
    interp: Any,
    proba: np.ndarray,
    raw: np.ndarray,
    y: np.ndarray,
    rep: EvalReport,
    threshold: float | None,
    grid_size: int,
) -> list[tuple[str, Path]]:
    from transferlab._internal.plotting import pyplot as _pyplot
    from transferlab.evaluate._plots import (
        AccuracyCoverageDisplay,
        ImageGridDisplay,
        ReliabilityDisplay,
    )
    from transferlab.report import plot_confusion_matrix

    plt = _pyplot()
    images = [
        (
            "Confusion matrix",
            plot_confusion_matrix(
                rep.confusion,
                rep.classes,
                out / "confusion_matrix.png",
                title=f"accuracy {rep.accuracy:.3f} (n={rep.n})",
            ),
        )
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    ReliabilityDisplay.from_predictions(raw.astype(np.float64), y, proba).plot(ax=axes[0])
    AccuracyCoverageDisplay.from_predictions(proba, y, threshold).plot(ax=axes[1])
    fig.savefig(out / "calibration.png", dpi=100)
    plt.close(fig)
    images.append(("Calibration and confidence", out / "calibration.png"))
    top = interp.top_losses(grid_size)
    if top:
        g = ImageGridDisplay(top, "top losses: the images the model got most wrong").plot()
        g.figure_.savefig(out / "top_losses.png", dpi=90)
        plt.close(g.figure_)
        images.append(("Top losses", out / "top_losses.png"))
    rows = interp.examples(grid_size // 2, correct=True) + interp.examples(
        grid_size // 2, correct=False
    )
    if rows:
        g = ImageGridDisplay(rows, "predictions: correct (black) and incorrect (red)").plot()
        g.figure_.savefig(out / "predictions_grid.png", dpi=90)
        plt.close(g.figure_)
        images.append(("Correct and incorrect predictions", out / "predictions_grid.png"))
    return images


def _feature_views(
    model: Any,
    interp: Any,
    out: Path,
    metrics: dict[str, Any],
    max_points: int = 1000,  # t-SNE is superlinear; a map of 1,000 points shows the structure
    n_errors: int = 6,
    k: int = 3,
) -> list[tuple[str, Path]]:
    """For probe models: a t-SNE map of the evaluated images (misclassified ringed) and, for the
    worst errors, their nearest training images in feature space: what the model compared with."""
    from transferlab._internal.plotting import pyplot as _pyplot
    from transferlab.evaluate import EmbeddingDisplay, embed_2d, nearest_neighbours
    from transferlab.models import TransferModel

    if not isinstance(model, TransferModel) or len(interp.paths) < 3:
        return []
    plt = _pyplot()
    images: list[tuple[str, Path]] = []
    rng = np.random.default_rng(0)
    pick = np.sort(
        rng.choice(len(interp.paths), size=min(max_points, len(interp.paths)), replace=False)
    )
    res = model.extractor.extract([interp.paths[i] for i in pick], on_error="skip")  # cached by now
    feats = res.features[model.extractor.layer]
    rows = pick[res.index]
    if len(rows) >= 3:
        pts = embed_2d(feats, "tsne")
        wrong = interp.y_pred[rows] != interp.y_true[rows]
        d = EmbeddingDisplay(
            pts,
            [interp.classes[t] for t in interp.y_true[rows]],
            wrong=wrong,
            title=f"t-SNE of {model.extractor.layer} features (colour: true class)",
        ).plot()
        d.figure_.savefig(out / "feature_map.png", dpi=100)
        plt.close(d.figure_)
        images.append(("Feature map (t-SNE)", out / "feature_map.png"))
    errors = interp.top_losses(n_errors, incorrect_only=True)
    ti = model.train_index
    if errors and ti is not None and len(ti["paths"]):
        qres = model.extractor.extract([e["path"] for e in errors], on_error="skip")
        nn_idx, nn_sim = nearest_neighbours(qres.features[model.extractor.layer], ti["X"], k)
        listing = []
        fig, axes = plt.subplots(
            len(qres.paths),
            k + 1,
            figsize=(2.4 * (k + 1), 2.6 * len(qres.paths)),
            squeeze=False,
            constrained_layout=True,
        )
        from transferlab.data import load_image

        for r, path in enumerate(qres.paths):
            e = errors[int(qres.index[r])]
            cells = [
                (
                    path,
                    f"ERROR true {e['true']}\npred {e['predicted']} ({e['p_predicted']:.2f})",
                    "C3",
                )
            ]
            neigh = []
            for j, s in zip(nn_idx[r], nn_sim[r], strict=True):
                cells.append((ti["paths"][j], f"train: {ti['labels'][j]}\ncosine {s:.2f}", "black"))
                neigh.append({"path": ti["paths"][j], "label": ti["labels"][j], "cosine": float(s)})
            listing.append(
                {"path": path, "true": e["true"], "predicted": e["predicted"], "neighbours": neigh}
            )
            for ax, (p, caption, colour) in zip(axes[r], cells, strict=True):
                ax.axis("off")
                try:
                    img = load_image(p, draft_size=128)
                    img.thumbnail((128, 128))
                    ax.imshow(np.asarray(img))
                except Exception:  # a moved training image: leave the cell blank, keep the caption
                    pass
                ax.set_title(caption, fontsize=8, color=colour)
        fig.savefig(out / "error_neighbours.png", dpi=90)
        plt.close(fig)
        metrics["error_neighbours"] = listing
        images.append(("Errors and their nearest training images", out / "error_neighbours.png"))
    return images


def _write_predictions_csv(path: Path, interp: Any) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true", "predicted", "probability", "p_true", "loss"])
        for i, p in enumerate(interp.paths):
            t, q = int(interp.y_true[i]), int(interp.y_pred[i])
            w.writerow(
                [
                    p,
                    interp.classes[t],
                    interp.classes[q],
                    f"{interp.proba[i, q]:.6f}",
                    f"{interp.proba[i, t]:.6f}",
                    f"{interp.losses[i]:.6f}",
                ]
            )


def _write_evaluate_report(out: Path, m: dict[str, Any], images: list[tuple[str, Path]]) -> Path:
    from transferlab.report import html_table, write_html_report

    summary = {
        "accuracy": m["accuracy"],
        "balanced accuracy": m["balanced_accuracy"],
        **{f"top-{k} accuracy": v for k, v in m["top_k_accuracy"].items() if k != "1"},
        "log loss": m["log_loss"],
        "expected calibration error": f"{m['calibration']['ece_calibrated']:.4f} with temperature "
        f"{m['calibration']['temperature']:.3g} ({m['calibration']['ece_uncalibrated']:.4f} without)",
        "images": f"{m['n']} ({m['split']} split of {m['data']}), {m['n_skipped']} skipped",
        "model": m["model"],
    }
    if "threshold" in m:
        t = m["threshold"]
        summary["confidence threshold"] = (
            f"{t['threshold']}: keeps {t['kept']} of {m['n']} ({t['coverage']:.0%}), "
            f"accuracy {t['accuracy_kept']:.4f}; {t['uncertain']} marked uncertain"
        )
    sections = [
        (
            "Per-class metrics",
            html_table(
                ["class", "precision", "recall", "f1", "support"],
                [
                    [c, v["precision"], v["recall"], v["f1"], v["support"]]
                    for c, v in m["per_class"].items()
                ],
            ),
        ),
        (
            "Most confused",
            html_table(
                ["true", "predicted as", "count"],
                [[d["true"], d["predicted"], d["count"]] for d in m["most_confused"][:15]],
            )
            if m["most_confused"]
            else "<p>No confusions.</p>",
        ),
    ]
    return write_html_report(
        out / "report.html",
        title="transferlab evaluate",
        summary=summary,
        sections=sections,
        images=images,
    )


def _evaluate_multilabel_run(
    model: Any,
    samples: list[Any],
    proba: np.ndarray,
    skipped: list[dict[str, str]],
    out: Path,
    split: str,
    data: Any,
    t0: float,
    grid_size: int,
) -> FitResult:
    """Multi-label evaluation: per-label metrics and confusion counts, per-label top losses."""
    from transferlab.data import label_matrix
    from transferlab.evaluate import evaluate_multilabel
    from transferlab.report import html_table, write_html_report

    classes = model.classes
    y = label_matrix(samples, classes)
    th = model._label_thresholds()
    rep = evaluate_multilabel(y, proba, classes, th)
    pred = (proba >= np.asarray(th)[None, :]).astype(int)
    per_label_confusion = {
        c: {
            "tp": int(((pred[:, j] == 1) & (y[:, j] == 1)).sum()),
            "fp": int(((pred[:, j] == 1) & (y[:, j] == 0)).sum()),
            "fn": int(((pred[:, j] == 0) & (y[:, j] == 1)).sum()),
            "tn": int(((pred[:, j] == 0) & (y[:, j] == 0)).sum()),
        }
        for j, c in enumerate(classes)
    }
    bce = -(y * np.log(np.clip(proba, 1e-7, 1)) + (1 - y) * np.log(np.clip(1 - proba, 1e-7, 1)))
    top_losses = {
        c: [
            {
                "path": samples[i].path,
                "true": bool(y[i, j]),
                "probability": float(proba[i, j]),
                "loss": float(bce[i, j]),
            }
            for i in np.argsort(-bce[:, j])[:grid_size]
        ]
        for j, c in enumerate(classes)
    }
    metrics = {
        "multi_label": True,
        "accuracy": rep.subset_accuracy,
        "mAP": rep.mAP,
        "f1_micro": rep.f1_micro,
        "f1_macro": rep.f1_macro,
        "per_label": rep.per_label,
        "per_label_confusion": per_label_confusion,
        "top_losses": top_losses,
        "n": rep.n,
        "n_skipped": len(skipped),
        "skipped": skipped,
        "classes": classes,
        "split": split,
        "data": str(data),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    table = html_table(
        ["label", "AP", "precision", "recall", "f1", "TP", "FP", "FN", "TN"],
        [
            [
                c,
                v["average_precision"],
                v["precision"],
                v["recall"],
                v["f1"],
                *per_label_confusion[c].values(),
            ]
            for c, v in rep.per_label.items()
        ],
    )
    report = write_html_report(
        out / "report.html",
        title="transferlab evaluate (multi-label)",
        summary={
            "mAP": rep.mAP,
            "micro F1": rep.f1_micro,
            "macro F1": rep.f1_macro,
            "subset accuracy": rep.subset_accuracy,
            "images": rep.n,
        },
        sections=[("Per-label metrics and confusion", table)],
    )
    return FitResult(
        metrics=metrics,
        out=out,
        model_dir=out,
        report=report,
        confusion_png=None,
        skipped=[(s["path"], s["reason"]) for s in skipped],
    )


def curve_run(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    shots: Sequence[int | str] = (1, 2, 5, 10, 20, "all"),
    repeats: int = 5,
    methods: Sequence[str] = ("transfer", "pixels", "scratch_cnn"),
    cnn_epochs: int = 30,
    backbone: str = "efficientnet_lite0",
    layer: str = "pre_logits",
    weights: str = "default",
    seed: int = 0,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Learning curves of transfer vs from-scratch baselines: curve.png, metrics.json, report.html."""
    from transferlab.evaluate import learning_curve
    from transferlab.report import write_html_report

    t0 = time.perf_counter()
    ds = load_dataset(data, val_fraction=val_fraction, seed=seed)
    out = Path(out)
    _prepare_out(out, overwrite)
    fx = FeatureExtractor(backbone, layer=layer, weights=weights, progress=progress)
    res = fx.extract([s.path for s in [*ds.train, *ds.val]], on_error="skip")
    X = res.features[layer]
    n_tr = len(ds.train)
    tr_rows = [r for r, i in enumerate(res.index) if i < n_tr]
    va_rows = [r for r, i in enumerate(res.index) if i >= n_tr]
    samples = [*ds.train, *ds.val]
    tr_s = [samples[res.index[r]] for r in tr_rows]
    va_s = [samples[res.index[r]] for r in va_rows]
    curve = learning_curve(
        X[tr_rows],
        [s.label for s in tr_s],
        X[va_rows],
        [s.label for s in va_s],
        train_paths=[s.path for s in tr_s],
        val_paths=[s.path for s in va_s],
        shots=shots,
        repeats=repeats,
        methods=methods,
        cnn_epochs=cnn_epochs,
        seed=seed,
        progress=progress,
    )
    from transferlab._internal.plotting import pyplot as _pyplot
    from transferlab.report import html_table

    plt = _pyplot()
    ax = curve.plot()
    ax.figure.savefig(out / "learning_curve.png", dpi=100)
    plt.close(ax.figure)
    metrics = {
        **curve.to_dict(),
        "dataset": ds.root,
        "backbone": backbone,
        "layer": layer,
        "n_skipped": len(res.failures),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    header = ["images per class", *curve.scores]
    rows = [
        [
            f"{s} ({n:.0f})" if s == "all" else str(s),
            *[
                f"{np.mean(curve.scores[m][i]):.3f} ± {np.std(curve.scores[m][i]):.3f}"
                for m in curve.scores
            ],
        ]
        for i, (s, n) in enumerate(zip(curve.shots, curve.n_per_class, strict=True))
    ]
    report = write_html_report(
        out / "report.html",
        title=f"transferlab curve — {Path(ds.root).name}",
        summary={
            "verdict": " ".join(curve.summary[:1]) or "-",
            "repeats": repeats,
            "validation images": curve.n_val,
            "backbone / layer": f"{backbone} / {layer}",
        },
        sections=[
            ("Accuracy (mean ± std over draws)", html_table(header, rows)),
            ("Reading", "".join(f"<p>{html.escape(s)}</p>" for s in curve.summary)),
        ],
        images=[("Learning curves", out / "learning_curve.png")],
    )
    return FitResult(metrics=metrics, out=out, model_dir=out, report=report, confusion_png=None)


def embed_run(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    method: str = "tsne",
    colour: str = "class",
    domains: Sequence[str | os.PathLike[str]] = (),
    thumbnails: bool = False,
    max_points: int = 3000,
    backbone: str = "efficientnet_lite0",
    layer: str = "pre_logits",
    weights: str = "default",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """A 2-D map (t-SNE / UMAP / PCA) of any layer's features, coloured by class, split or
    domain: embedding.png, embedding.csv (path, label, split, domain, x, y), report.html.

    `domains` are other image folders mapped with `data` (e.g. photos beside cartoons); each
    one's points are labelled by its folder name, and ``colour="domain"`` colours by source.
    """
    from transferlab._internal.plotting import pyplot as _pyplot
    from transferlab.data import Sample, collect_images, list_images
    from transferlab.evaluate import EmbeddingDisplay, embed_2d
    from transferlab.exceptions import DatasetNotFoundError
    from transferlab.report import write_html_report

    if colour not in ("class", "split", "domain"):
        raise InvalidParameterError(
            f"--colour must be 'class', 'split' or 'domain', got {colour!r}"
        )
    samples, splits = collect_images(data, seed=seed)
    sources = [Path(str(data)).name] * len(samples)
    for d in domains:
        dp = Path(d)
        if not dp.exists():
            raise DatasetNotFoundError(f"--domain {dp}: no such file or folder")
        paths = [str(dp)] if dp.is_file() else list_images(dp)[0]
        if not paths:
            raise DatasetError(f"--domain {dp}: no image files in it")
        name = dp.name if dp.name not in sources else f"{dp.parent.name}/{dp.name}"
        samples += [Sample(p) for p in paths]
        splits += [""] * len(paths)
        sources += [name] * len(paths)
    if len(samples) > max_points:  # a map of thousands of points says no more, and t-SNE is O(n^2)
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(samples), size=max_points, replace=False))
        samples, splits = [samples[i] for i in keep], [splits[i] for i in keep]
        sources = [sources[i] for i in keep]
    out = Path(out)
    _prepare_out(out, overwrite)
    fx = FeatureExtractor(backbone, layer=layer, weights=weights, progress=progress)
    res = fx.extract([s.path for s in samples], on_error="skip")
    kept = [samples[i] for i in res.index]
    kept_splits = [splits[i] or "-" for i in res.index]
    kept_sources = [sources[i] for i in res.index]
    points = embed_2d(res.features[layer], method, seed=seed)
    labels = [s.label or "(unlabelled)" for s in kept]
    by = {"class": labels, "split": kept_splits, "domain": kept_sources}[colour]
    plt = _pyplot()
    d = EmbeddingDisplay(
        points,
        by,
        title=f"{method.upper()} of {backbone} / {layer} ({len(kept)} images)",
        paths=[s.path for s in kept],
    ).plot(thumbnails=thumbnails)
    d.figure_.savefig(out / "embedding.png", dpi=100)
    plt.close(d.figure_)
    import csv

    with open(out / "embedding.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "domain", "x", "y"])
        for s, sp, dom, (x, y) in zip(kept, kept_splits, kept_sources, points, strict=True):
            w.writerow([s.path, s.label or "", sp, dom, f"{x:.5f}", f"{y:.5f}"])
    metrics = {
        "method": method,
        "colour": colour,
        "n": len(kept),
        "domains": dict(Counter(kept_sources)),
        "backbone": backbone,
        "layer": layer,
        "n_skipped": len(res.failures),
        "classes": sorted(set(labels)),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    report = write_html_report(
        out / "report.html",
        title=f"transferlab embed — {Path(str(data)).name}",
        summary={"images": len(kept), "map": f"{method} of {backbone} / {layer}"},
        images=[("Feature map", out / "embedding.png")],
    )
    return FitResult(metrics=metrics, out=out, model_dir=out, report=report, confusion_png=None)
