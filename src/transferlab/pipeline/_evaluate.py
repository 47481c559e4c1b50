"""`run_evaluate`: score a saved model on labelled images: metrics, calibration, confidence
filtering, interpretation (most confused, top losses), a feature map, plots and report."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.deprecation import warn_once
from transferlab._internal.rundir import prepare_out
from transferlab.data import Sample, load_dataset
from transferlab.evaluate import evaluate_predictions
from transferlab.exceptions import DatasetError, InvalidParameterError
from transferlab.pipeline._results import FLATTEN, OMIT_NONE, Metrics, RunResult
from transferlab.pipeline._shared import check_choice

__all__ = [
    "EvaluateConfig",
    "EvaluateMetrics",
    "MultiLabelEvaluateMetrics",
    "evaluate_run",
    "run_evaluate",
]

SPLITS = ("auto", "train", "val", "test", "all")


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything `run_evaluate` needs.

    Attributes:
        model_dir: a saved model (`transferlab fit` / `finetune`).
        data: labelled images (see `load_dataset`).
        out: folder for metrics.json, predictions.csv, plots and report.html.
        split: which images: auto (test, else val, when the data carries a split; else all),
            train, val, test or all.
        threshold: confidence below which a prediction counts as "uncertain" (reported).
        chunk_size: images predicted at a time (only probabilities are kept between chunks).
        grid_size: images in the top-losses grid.
    """

    model_dir: str | os.PathLike[str]
    data: str | os.PathLike[str]
    out: str | os.PathLike[str]
    split: str = "auto"
    threshold: float | None = None
    chunk_size: int = 512
    grid_size: int = 12
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise InvalidParameterError(
                f"--threshold must be between 0 and 1, got {self.threshold}"
            )
        check_choice("--split", self.split, SPLITS, wording="auto, train, val, test or all")


@dataclass(kw_only=True)
class ScoredImages(Metrics):
    """What both kinds of evaluation report about the images scored (after `n`)."""

    n_skipped: int
    skipped: list[dict[str, str]]
    classes: list[str]
    split: str
    data: str


@dataclass(kw_only=True)
class EvaluateMetrics(Metrics):
    """metrics.json of a single-label `evaluate`."""

    accuracy: float
    balanced_accuracy: float
    top_k_accuracy: dict[str, float]
    log_loss: float
    per_class: dict[str, dict[str, float]]
    macro: dict[str, float]
    micro: dict[str, float]
    confusion: list[list[int]]
    ece: float
    calibration: dict[str, float]
    most_confused: list[dict[str, Any]]
    top_losses: list[dict[str, Any]]
    accuracy_coverage: dict[str, dict[str, float]]
    n: int
    scored: ScoredImages = field(metadata=FLATTEN)
    model: str
    threshold: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    error_neighbours: list[dict[str, Any]] | None = field(default=None, metadata=OMIT_NONE)
    seconds: float = 0.0


@dataclass(kw_only=True)
class MultiLabelEvaluateMetrics(Metrics):
    """metrics.json of a multi-label `evaluate`."""

    multi_label: bool = True
    accuracy: float
    mAP: float
    f1_micro: float
    f1_macro: float
    per_label: dict[str, dict[str, float]]
    per_label_confusion: dict[str, dict[str, int]]
    top_losses: dict[str, list[dict[str, Any]]]
    n: int
    scored: ScoredImages = field(metadata=FLATTEN)
    seconds: float = 0.0


def _samples_to_evaluate(
    data: str | os.PathLike[str], split: str, multi_label: bool
) -> tuple[list[Sample], str]:
    """The labelled images `evaluate` scores: a named split, or all of a dataset without splits."""
    ds = load_dataset(data, multi_label=multi_label)
    if split == "auto":  # the user's own held-out images when the data names them
        split = ("test" if ds.test else "val") if ds.split_explicit else "all"
    chosen: dict[str, list[Sample]] = {
        "train": ds.train,
        "val": ds.val,
        "test": ds.test,
        "all": [*ds.train, *ds.val, *ds.test],
    }
    if not chosen[split]:
        raise DatasetError(f"{data} has no {split!r} images")
    return chosen[split], split


class _Predictions:
    """Raw probabilities of the images that decode, predicted a chunk at a time.

    For a probe model the features come from this one extraction: those of `keep` (input
    positions, for the feature map) are kept, so nothing is extracted twice.
    """

    def __init__(self, model: Any, keep: set[int]) -> None:
        from transferlab.models import TransferModel

        self.model = model
        self.probe_model = isinstance(model, TransferModel)
        self.keep = keep
        self.rows: list[np.ndarray] = []
        self.samples: list[Sample] = []
        self.errors: dict[str, str] = {}
        self.features: dict[str, np.ndarray] = {}  # path -> feature vector (kept images)

    def add(self, chunk: list[Sample], start: int) -> None:
        paths = [s.path for s in chunk]
        if self.probe_model:
            res = self.model.extractor.extract(paths, on_error="skip")
            X = res.features[self.model.extractor.layer]
            proba = (
                self.model.probe.predict_proba(X)
                if len(res.paths)
                else np.zeros((0, len(self.model.classes)))
            )
            index, errs = res.index, {e.path: e.reason for e in res.failures}
            for r, i in enumerate(index):
                if start + int(i) in self.keep:
                    self.features[paths[i]] = X[r]
        else:
            proba, index, errs = self.model.predict_proba_paths(paths, calibrated=False)
        self.errors.update(errs)
        self.rows.append(proba.astype(np.float32))
        self.samples.extend(chunk[i] for i in index)


def run_evaluate(config: EvaluateConfig) -> RunResult:
    """Score a saved model on labelled images: metrics, calibration, confidence filtering,
    interpretation (most confused, top losses) and plots, in OUT/metrics.json and OUT/report.html.

    Images are predicted `chunk_size` at a time and only probabilities are kept (and the
    features of the at most 1,000 images of the feature map), so memory grows with the number of
    images by a few floats each, not by feature vectors or pixels.
    """
    from tqdm.auto import tqdm

    from transferlab.models import load_model

    cfg = config
    t0 = time.perf_counter()
    model = load_model(cfg.model_dir, progress=cfg.progress)
    samples, used_split = _samples_to_evaluate(cfg.data, cfg.split, model.multi_label)
    out = Path(cfg.out)
    prepare_out(out, cfg.overwrite)
    classes = model.classes
    if not model.multi_label:
        unknown = sorted({s.label for s in samples} - set(classes))
        if unknown:
            raise DatasetError(
                f"{cfg.data} has classes the model does not know: {', '.join(unknown)} (model classes: {', '.join(classes)})"
            )
    rng = np.random.default_rng(
        0
    )  # t-SNE is superlinear; a map of 1,000 points shows the structure
    keep = set(
        rng.choice(len(samples), size=min(_MAP_POINTS, len(samples)), replace=False).tolist()
    )
    pred = _Predictions(model, keep if not model.multi_label else set())
    for start in tqdm(
        range(0, len(samples), cfg.chunk_size),
        desc="evaluate",
        unit="chunk",
        disable=None if cfg.progress else True,
        leave=False,
    ):
        pred.add(samples[start : start + cfg.chunk_size], start)
    raw = np.concatenate(pred.rows) if pred.rows else np.zeros((0, len(classes)), np.float32)
    if not len(raw):
        raise DatasetError(f"no image of {cfg.data} ({used_split}) could be read")
    scored = ScoredImages(
        n_skipped=len(pred.errors),
        skipped=[{"path": p, "reason": r} for p, r in pred.errors.items()],
        classes=classes,
        split=used_split,
        data=str(cfg.data),
    )
    if model.multi_label:
        metrics, report, cm_png = _evaluate_multilabel(
            model, pred.samples, raw, scored, out, cfg, t0
        )
    else:
        metrics, report, cm_png = _evaluate_single(model, pred, raw, scored, out, cfg, t0)
    return RunResult.written(
        metrics,
        out,
        model_dir=Path(cfg.model_dir),
        report=report,
        confusion_png=cm_png,
        skipped=list(pred.errors.items()),
    )


_MAP_POINTS = 1000


def _evaluate_single(
    model: Any,
    pred: _Predictions,
    raw: np.ndarray,
    scored: ScoredImages,
    out: Path,
    cfg: EvaluateConfig,
    t0: float,
) -> tuple[EvaluateMetrics, Path, Path]:
    """Single-label evaluation: metrics, report and the confusion plot (written by the caller:
    metrics.json)."""
    from transferlab.evaluate import (
        Interpretation,
        TemperatureScaler,
        accuracy_coverage,
        expected_calibration_error,
        top_k_accuracy,
    )
    from transferlab.report import evaluation_plots, write_evaluate_report

    classes = model.classes
    kept = pred.samples
    proba = TemperatureScaler(model.temperature).transform(raw.astype(np.float64))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[s.label] for s in kept])
    rep = evaluate_predictions([s.label for s in kept], proba, classes)
    interp = Interpretation([s.path for s in kept], y, proba, classes)
    curve = accuracy_coverage(proba, y)
    metrics = EvaluateMetrics(
        accuracy=rep.accuracy,
        balanced_accuracy=rep.balanced_accuracy,
        top_k_accuracy={
            str(k): top_k_accuracy(y, proba, k) for k in (1, 3, 5) if k <= len(classes)
        },
        log_loss=rep.log_loss,
        per_class=rep.per_class,
        macro=rep.macro,
        micro={"precision": rep.accuracy, "recall": rep.accuracy, "f1": rep.accuracy},
        confusion=rep.confusion,
        ece=expected_calibration_error(proba, y),
        calibration={
            "temperature": model.temperature,
            "ece_uncalibrated": expected_calibration_error(raw.astype(np.float64), y),
            "ece_calibrated": expected_calibration_error(proba, y),
        },
        most_confused=[
            {"true": t, "predicted": p, "count": n} for t, p, n in interp.most_confused()
        ],
        top_losses=interp.top_losses(cfg.grid_size),
        accuracy_coverage={
            f"{t:.2f}": {"coverage": float(c), "accuracy": float(a)}
            for t, c, a in zip(
                curve["threshold"][::10],
                curve["coverage"][::10],
                curve["accuracy"][::10],
                strict=True,
            )
        },
        n=rep.n,
        scored=scored,
        model=str(cfg.model_dir),
    )
    if cfg.threshold is not None:
        keep = proba.max(1) >= cfg.threshold
        metrics.threshold = {
            "threshold": cfg.threshold,
            "kept": int(keep.sum()),
            "uncertain": int((~keep).sum()),
            "coverage": float(keep.mean()),
            "accuracy_kept": float((proba.argmax(1)[keep] == y[keep]).mean())
            if keep.any()
            else float("nan"),
        }
    images = evaluation_plots(out, interp, proba, raw, y, rep, cfg.threshold, cfg.grid_size)
    images += _feature_views(model, interp, pred.features, out, metrics)
    metrics.seconds = round(time.perf_counter() - t0, 3)
    _write_predictions_csv(out / "predictions.csv", interp)
    return metrics, write_evaluate_report(out, metrics, images), images[0][1]


def _feature_views(
    model: Any,
    interp: Any,
    features: dict[str, np.ndarray],
    out: Path,
    metrics: EvaluateMetrics,
    n_errors: int = 6,
    k: int = 3,
) -> list[tuple[str, Path]]:
    """For probe models: a t-SNE map of the evaluated images (misclassified ringed) and, for the
    worst errors, their nearest training images in feature space: what the model compared with.
    Uses the features kept from the prediction pass."""
    from transferlab.evaluate import embed_2d, nearest_neighbours
    from transferlab.report import plot_error_neighbours, plot_feature_map

    if not features or len(interp.paths) < 3:
        return []
    layer = model.extractor.layer
    images: list[tuple[str, Path]] = []
    rows = np.array([r for r, p in enumerate(interp.paths) if p in features], dtype=int)
    if len(rows) >= 3:
        pts = embed_2d(np.stack([features[interp.paths[r]] for r in rows]), "tsne")
        wrong = interp.y_pred[rows] != interp.y_true[rows]
        labels = [interp.classes[t] for t in interp.y_true[rows]]
        images.append(
            (
                "Feature map (t-SNE)",
                plot_feature_map(out / "feature_map.png", pts, labels, wrong, layer),
            )
        )
    errors = interp.top_losses(n_errors, incorrect_only=True)
    ti = model.train_index
    if errors and ti is not None and len(ti["paths"]):
        missing = [e["path"] for e in errors if e["path"] not in features]
        if missing:  # beyond the map's sample: only these few are extracted again
            res = model.extractor.extract(missing, on_error="skip")
            features = {**features, **dict(zip(res.paths, res.features[layer], strict=True))}
        errors = [e for e in errors if e["path"] in features]
        nn_idx, nn_sim = nearest_neighbours(
            np.stack([features[e["path"]] for e in errors]), ti["X"], k
        )
        neighbours = [
            [
                {"path": ti["paths"][j], "label": ti["labels"][j], "cosine": float(s)}
                for j, s in zip(nn_idx[r], nn_sim[r], strict=True)
            ]
            for r in range(len(errors))
        ]
        metrics.error_neighbours = [
            {"path": e["path"], "true": e["true"], "predicted": e["predicted"], "neighbours": n}
            for e, n in zip(errors, neighbours, strict=True)
        ]
        plot_error_neighbours(out / "error_neighbours.png", errors, neighbours, k)
        images.append(("Errors and their nearest training images", out / "error_neighbours.png"))
    return images


def _write_predictions_csv(path: Path, interp: Any) -> None:
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


def _evaluate_multilabel(
    model: Any,
    samples: list[Sample],
    proba: np.ndarray,
    scored: ScoredImages,
    out: Path,
    cfg: EvaluateConfig,
    t0: float,
) -> tuple[MultiLabelEvaluateMetrics, Path, None]:
    """Multi-label evaluation: per-label metrics and confusion counts, per-label top losses."""
    from transferlab.data import label_matrix
    from transferlab.evaluate import evaluate_multilabel
    from transferlab.report import write_evaluate_multilabel_report

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
            for i in np.argsort(-bce[:, j])[: cfg.grid_size]
        ]
        for j, c in enumerate(classes)
    }
    metrics = MultiLabelEvaluateMetrics(
        accuracy=rep.subset_accuracy,
        mAP=rep.mAP,
        f1_micro=rep.f1_micro,
        f1_macro=rep.f1_macro,
        per_label=rep.per_label,
        per_label_confusion=per_label_confusion,
        top_losses=top_losses,
        n=rep.n,
        scored=scored,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return metrics, write_evaluate_multilabel_report(out, metrics), None


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
) -> RunResult:
    """Deprecated: `run_evaluate(EvaluateConfig(...))`."""
    warn_once("transferlab.pipeline.evaluate_run", "transferlab.pipeline.run_evaluate")
    return run_evaluate(
        EvaluateConfig(
            model_dir=model_dir,
            data=data,
            out=out,
            split=split,
            threshold=threshold,
            chunk_size=chunk_size,
            grid_size=grid_size,
            overwrite=overwrite,
            progress=progress,
        )
    )
