"""`run_fit`: dataset -> features -> linear probe -> held-out metrics -> saved model + report.

The CLI's `fit` and `demo` and the service call it; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab._internal.choices import CLASSIFIERS, FEATURE_PRECISIONS
from transferlab._internal.deprecation import warn_once
from transferlab._internal.rundir import prepare_out
from transferlab.backbones import POOLS
from transferlab.data import DEFAULT_MAX_PIXELS, Dataset
from transferlab.exceptions import DatasetError, InvalidParameterError
from transferlab.pipeline._domain import (
    DomainNote,
    adapted_probe,
    drawn_val_advice,
    load_target,
    resolve_remedy,
)
from transferlab.pipeline._memo import RunMemo
from transferlab.pipeline._results import FLATTEN, OMIT_NONE, Metrics, RunResult
from transferlab.pipeline._shared import (
    ClassifierMetrics,
    DataSource,
    ExtractorSettings,
    MultiLabelScores,
    SplitCounts,
    calibrate,
    check_choice,
    check_min,
    eval_block,
    extract_splits,
    int8_summary,
    leakage_note,
    resolve_dataset,
    skipped_rows,
)
from transferlab.pipeline._views import VIEW_FILES, training_views, written_views

if TYPE_CHECKING:  # scikit-learn comes with these: imported where they run (issue 17)
    from transferlab.evaluate import EvalReport
    from transferlab.features import FeatureExtractor

__all__ = ["FitConfig", "FitMetrics", "MultiLabelFitMetrics", "fit", "run_fit"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig(ExtractorSettings):
    """Everything `run_fit` needs; CLI flags map one-to-one onto these fields.

    Attributes:
        data: dataset folder or CSV (see `load_dataset`), or a `Dataset` already loaded.
        out: run directory for metrics.json, report.html, the confusion matrix and ``model/``.
        backbone, layer, pool, weights: the feature extractor (see `FeatureExtractor`).
        classifier, C, class_weight: the probe (see `LinearProbe`).
        val_fraction, seed: the split, when the data does not carry one.
        strict: stop at the first broken image instead of skipping it.
        batch_size, num_workers, device: extraction settings.
        cache_dir: feature cache folder (None: the default); ``no_cache`` turns caching off.
        max_pixels: decompression-bomb limit per image.
        overwrite: allow writing into a non-empty `out`.
        precision: feature precision (see `FeatureExtractor`); ``"int8"`` calibrates on the
            training images and reports its fidelity to fp32 in metrics.json.
        target: a folder of unlabelled images from the domain the model will be asked about
            (sketches when training on photos, another scanner's x-rays), for ``remedy``.
        remedy: closing a gap between the training images and `target` (issue 22): ``auto``
            (with `target`: the measured-best remedy for the shift, see
            `transferlab.diagnose.choose_remedy`; without: none), ``none``, ``style`` (train
            also on line and greyscale renderings; needs no target), ``coral`` or
            ``self-train`` (learn from the unlabelled target; see `DomainAdaptedProbe`).
            metrics.json ``domain`` says which images each figure used.
    """

    data: DataSource
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
    precision: str = "auto"
    target: str | None = None
    remedy: str = "auto"

    def __post_init__(self) -> None:
        from transferlab.diagnose._remedies import REMEDIES

        check_choice("remedy", self.remedy, REMEDIES)
        if self.multi_label and (self.target is not None or self.remedy not in ("none", "auto")):
            raise InvalidParameterError(
                "remedy/target: domain adaptation is for single-label data; drop --target and "
                "--remedy for --multi-label"
            )

        check_choice("pool", self.pool, POOLS)
        check_choice("precision", self.precision, FEATURE_PRECISIONS)
        check_choice("classifier", self.classifier, CLASSIFIERS)
        if not 0.0 < self.val_fraction < 1.0:
            raise InvalidParameterError(
                f"val_fraction must be between 0 and 1, got {self.val_fraction}"
            )
        check_choice(
            "class_weight", self.class_weight, (None, "balanced"), wording="None or 'balanced'"
        )
        check_min("batch_size", self.batch_size, 1)

    def dataset(self) -> Dataset:
        """`data` as a `Dataset`: loaded unless one was given."""
        return resolve_dataset(
            self.data,
            val_fraction=self.val_fraction,
            seed=self.seed,
            multi_label=self.multi_label,
        )


@dataclass(kw_only=True)
class FitMetrics(ClassifierMetrics):
    """metrics.json of a single-label `fit`."""

    pool: str
    classifier: str
    C: float
    dataset: dict[str, Any]
    n_cached: int
    adapt_bn: dict[str, int] | None
    seconds: float
    stage_seconds: dict[str, float]
    extract_images_per_second: float
    test: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    calibration: dict[str, Any]
    precision: str = "fp32"
    int8: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    #: the memo this run's figures were restored from (the computation that made them)
    reused_run: str | None = field(default=None, metadata=OMIT_NONE)
    #: --target / --remedy: the remedy, why, and which images it learnt from (`DomainNote`)
    domain: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    #: no --target/--remedy, but val/ is colourless drawings of colour photos: what to try
    remedy_advice: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass(kw_only=True)
class MultiLabelFitMetrics(Metrics):
    """metrics.json of a multi-label `fit`."""

    multi_label: bool = True
    scores: MultiLabelScores = field(metadata=FLATTEN)
    counts: SplitCounts = field(metadata=FLATTEN)
    backbone: str
    weights_sha256: str | None
    layer: str
    pool: str
    classifier: str = "logreg-ovr"
    C: float
    dataset: dict[str, Any]
    n_cached: int
    stage_seconds: dict[str, float]
    seconds: float = 0.0
    test: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)


def run_fit(config: FitConfig) -> RunResult:
    """Extract features, fit a linear probe, evaluate on the held-out split, save everything.

    Broken images are skipped and listed (``metrics["skipped"]``) unless ``config.strict``, which
    raises `ImageLoadError` on the first one.

    Raises:
        DatasetError: the data cannot be used (see `load_dataset`), or skipping broken images left a
            class with no training image.
        ImageLoadError: with ``strict=True``, the first broken image.
    """
    t0 = time.perf_counter()
    ds = config.dataset()
    out = Path(config.out)
    prepare_out(out, config.overwrite)
    memo = _fit_memo(config, ds)
    restored = memo.restore(out, _MEMO_FILES) if memo is not None else None
    if memo is not None and restored is not None:
        return _restored(config, ds, out, memo, restored, t0)
    # int8 calibrates on the training images only (the val split is scored, not looked at)
    calibration = [s.path for s in ds.train] if config.precision == "int8" else None
    fx = config.extractor(calibration=calibration).fit()
    adabn_images = _adapt_bn(fx, ds, config) if config.adapt_bn else 0
    t_load = time.perf_counter()

    splits = {"train": ds.train, "val": ds.val, "test": ds.test}
    res, X, kept = extract_splits(fx, splits, on_error="raise" if config.strict else "skip")
    t_extract = time.perf_counter()
    skipped = [(e.path, e.reason) for e in res.failures]
    times = (t0, t_load, t_extract)
    if ds.multi_label:
        Y = {name: ds.label_matrix(samples) for name, samples in kept.items()}
        return _fit_multilabel(config, ds, fx, X, Y, skipped, res.n_cached, out, times)

    y = {name: np.asarray([s.label for s in kept[name]], dtype=object) for name in splits}
    missing = sorted(set(ds.classes) - set(y["train"]))
    if missing:
        raise DatasetError(
            f"after skipping {len(skipped)} broken images, class(es) {', '.join(missing)} have no "
            "training image left; fix or add images"
        )
    if len(y["val"]) == 0:
        raise DatasetError(
            f"after skipping {len(skipped)} broken images, no validation image is left"
        )
    from transferlab.evaluate import evaluate_predictions
    from transferlab.models import MAX_TRAIN_INDEX, TransferModel

    probe, domain = _fit_probe(config, fx, X, y, kept)
    t_probe = time.perf_counter()

    reports: dict[str, EvalReport] = {}
    probas: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in ("val", "test"):
        if len(y[name]):
            probas[name] = (probe.predict_proba(X[name]), y[name])
            reports[name] = evaluate_predictions(y[name], probas[name][0], probe.classes_)
    calibration = calibrate(probas, [str(c) for c in probe.classes_])
    t_eval = time.perf_counter()
    val, test = reports["val"], reports.get("test")
    metrics = FitMetrics(
        **FitMetrics.scores(
            val, n_train=len(y["train"]), test=test, skipped=skipped, classes=probe.classes_
        ),
        backbone=fx.card_.name,
        weights_sha256=fx.card_.weights_sha256,
        layer=config.layer,
        pool=config.pool,
        classifier=config.classifier,
        C=probe.C_,
        dataset={
            "path": ds.root,
            "source": ds.source,
            "split": ds.split_note,
            "n_ignored": len(ds.ignored),
        },
        n_cached=res.n_cached,
        adapt_bn={"images": adabn_images} if config.adapt_bn else None,
        seconds=round(time.perf_counter() - t0, 3),
        stage_seconds={
            "load_backbone": round(t_load - t0, 3),
            "extract": round(t_extract - t_load, 3),
            "probe": round(t_probe - t_extract, 3),
            "evaluate": round(t_eval - t_probe, 3),
        },
        extract_images_per_second=round(
            (sum(map(len, splits.values())) - res.n_cached) / max(t_extract - t_load, 1e-9), 2
        ),
        test=eval_block(test) if test is not None else None,
        calibration=calibration,
        precision=fx._precision(),
        int8=_with_probe_agreement(int8_summary(fx), config, probe, kept["val"], X["val"]),
        leakage=leakage_note(
            ds,
            vectors={s.path: v for n in X for s, v in zip(kept[n], X[n], strict=True)},
        ),
        domain=domain.to_dict() if domain is not None else None,
        remedy_advice=drawn_val_advice(
            ds,
            f"transferlab fit {ds.root} --remedy style",
            target=config.target,
            remedy=config.remedy,
        ),
    )
    model = TransferModel(fx, probe, metrics.to_dict())
    model.temperature = calibration["temperature"]
    if len(y["train"]) <= MAX_TRAIN_INDEX:
        model.train_index = {
            "X": X["train"],
            "labels": [str(v) for v in y["train"]],
            "paths": [s.path for s in kept["train"]],
        }
    model_dir = model.save(out / "model", overwrite=config.overwrite)
    from transferlab.report import write_fit_report

    images = training_views(
        out,
        [s.path for s in kept["val"]],
        [str(v) for v in y["val"]],
        probas["val"][0],
        [str(c) for c in probe.classes_],
        temperature=calibration["temperature"],
        features=X["val"],
        layer=config.layer,
    )
    cm_png = images[0][1]
    metrics.seconds = round(time.perf_counter() - t0, 3)
    report = write_fit_report(out, ds, metrics, images)
    memo = memo or _fit_memo(config, ds)  # the first run made the card the key needs
    # under 3 validation images there is no map to keep: such a fit is computed every time
    if memo is not None and all((out / f).exists() for f in _MEMO_FILES):
        memo.store(out, _MEMO_FILES, metrics)
    logger.info("fit done: accuracy %.4f on %d validation images", val.accuracy, val.n)
    return RunResult.written(
        metrics, out, model_dir=model_dir, report=report, confusion_png=cm_png, skipped=skipped
    )


def _fit_probe(
    config: FitConfig,
    fx: FeatureExtractor,
    X: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    kept: dict[str, list[Any]],
) -> tuple[Any, DomainNote | None]:
    """The probe, with the remedy `config` asks for applied (and its note), or a plain one."""
    from transferlab.features._cache import default_cache_dir
    from transferlab.probe import LinearProbe

    def plain() -> LinearProbe:
        return LinearProbe(
            classifier=config.classifier, C=config.C, class_weight=config.class_weight
        )

    if config.target is None and config.remedy in ("none", "auto"):
        return plain().fit(X["train"], y["train"]), None
    target = load_target(config.target, config.seed) if config.target is not None else None
    note = resolve_remedy(
        config.remedy,
        [s.path for s in kept["train"]],
        target,
        [s.path for s in kept["val"]],
        config.target,
        allowed=("none", "style", "coral", "self-train"),
    )
    base = plain().fit(X["train"], y["train"])
    note.plain_val_accuracy = float(base.score(X["val"], y["val"]))
    if note.remedy == "none":
        return base, note
    folder = (Path(config.cache_dir) if config.cache_dir else default_cache_dir()) / "styles"
    if config.no_cache:
        folder = Path(config.out) / "styles"
    probe = adapted_probe(note, fx, kept["train"], X["train"], y["train"], target, folder, plain)
    return probe, note


def _with_probe_agreement(
    summary: dict[str, Any] | None,
    config: FitConfig,
    probe: Any,
    val: list[Any],
    X_val: np.ndarray,
) -> dict[str, Any] | None:
    """An int8 fit's quantisation summary plus the probe's agreement: the same probe on the
    validation images' fp32 vectors against their int8 ones (what int8 changes in its answers)."""
    if summary is None or not len(val):
        return summary
    fp32 = config.extractor(precision="fp32").extract([s.path for s in val], on_error="skip")
    X32 = fp32.features[config.layer]
    rows = {p: i for i, p in enumerate(fp32.paths)}
    both = [i for i, s in enumerate(val) if s.path in rows]
    on_fp32 = probe.predict(X32[[rows[val[i].path] for i in both]])
    same = probe.predict(X_val[both]) == on_fp32
    labels = np.asarray([str(val[i].label) for i in both], dtype=object)
    fp32_acc = float(np.mean(on_fp32.astype(str) == labels))
    return {
        **summary,
        "probe_agreement_val": float(np.mean(same)),
        "val_accuracy_same_probe_fp32_features": fp32_acc,
    }


#: what a fit's memo keeps besides its metrics (report.html is written again: it shows times):
#: the model and every view `training_views` draws
_MEMO_FILES = ["model", *(f for f, _ in VIEW_FILES)]


def _fit_memo(config: FitConfig, ds: Dataset) -> RunMemo | None:
    """The memo of this fit (see `RunMemo`), or None where it does not apply: no feature cache,
    AdaBN, multi-label, a precision other than fp32, a GPU, no backbone card yet, or an image
    that cannot be read."""
    from transferlab.backbones._card import BackboneCard, cuda_may_be_present
    from transferlab.exceptions import ImageLoadError
    from transferlab.features._cache import FEATURE_FORMAT, default_cache_dir, file_digest

    if config.no_cache or config.adapt_bn or ds.multi_label:
        return None
    if config.target is not None or config.remedy not in ("none", "auto"):
        return None  # the target folder and the renderings are not in the key
    if config.precision not in ("auto", "fp32"):
        return None
    if config.device != "cpu" and (config.device != "auto" or cuda_may_be_present()):
        return None
    folder = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    card = BackboneCard.load(folder, config.backbone, config.weights)
    if card is None or config.layer not in card.layers:
        return None
    splits: dict[str, list[list[str]]] = {}
    for name, samples in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        try:
            splits[name] = [[s.path, file_digest(s.path), str(s.label)] for s in samples]
        except ImageLoadError:
            return None
    settings = ("backbone", "weights", "layer", "pool", "classifier", "C", "class_weight")
    inputs = {
        "settings": {k: getattr(config, k) for k in settings},
        "strict": config.strict,
        "max_pixels": config.max_pixels,
        "backbone": card.fingerprint(),
        "preprocessing": card.preprocessing(),
        "feature_format": FEATURE_FORMAT,
        "dataset": [ds.root, ds.source, ds.split_note, len(ds.ignored), list(ds.classes)],
        "splits": splits,
        # a changed metrics schema must not restore an object of the old one
        "schema": [f.name for f in dataclasses.fields(FitMetrics)],
    }
    return RunMemo.of(folder, "fit", inputs)


def _restored(
    config: FitConfig, ds: Dataset, out: Path, memo: RunMemo, metrics: FitMetrics, t0: float
) -> RunResult:
    """`run_fit`'s result from its memo: the same model, metrics and plot as the run that made
    it, with this run's times; metrics.json and report.html written again."""
    from transferlab.report import write_fit_report

    t = round(time.perf_counter() - t0, 3)
    metrics.n_cached = metrics.n_train + metrics.n_val + metrics.n_test
    metrics.seconds = t
    metrics.stage_seconds = {"load_backbone": 0.0, "extract": t, "probe": 0.0, "evaluate": 0.0}
    metrics.extract_images_per_second = 0.0
    metrics.reused_run = memo.key
    images = written_views(out)
    report = write_fit_report(out, ds, metrics, images)
    logger.info("fit restored from its memo %s", memo.key)
    return RunResult.written(
        metrics,
        out,
        model_dir=out / "model",
        report=report,
        confusion_png=out / "confusion_matrix.png",
        skipped=[(s["path"], s["reason"]) for s in metrics.skipped],
    )


def _adapt_bn(fx: FeatureExtractor, ds: Dataset, config: FitConfig) -> int:
    """AdaBN on the training images; the model keeps the adapted backbone. Images used."""
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
    return counter[0]


def _fit_multilabel(
    config: FitConfig,
    ds: Dataset,
    fx: FeatureExtractor,
    X: dict[str, np.ndarray],
    Y: dict[str, np.ndarray],
    skipped: list[tuple[str, str]],
    n_cached: int,
    out: Path,
    times: tuple[float, float, float],
) -> RunResult:
    """Multi-label branch of `run_fit`: one-vs-rest probe, per-label thresholds tuned on val."""
    from transferlab.evaluate import evaluate_multilabel, tune_thresholds
    from transferlab.models import TransferModel
    from transferlab.probe import MultiLabelProbe
    from transferlab.report import write_fit_multilabel_report

    t0, t_load, t_extract = times
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
    test = None
    if len(Y["test"]):
        t = evaluate_multilabel(
            Y["test"], probe.predict_proba(X["test"]), ds.classes, probe.thresholds_
        )
        test = {
            "subset_accuracy": t.subset_accuracy,
            "mAP": t.mAP,
            "f1_micro": t.f1_micro,
            "f1_macro": t.f1_macro,
            "per_label": t.per_label,
            "n": t.n,
        }
    metrics = MultiLabelFitMetrics(
        scores=MultiLabelScores.of(val, ds.classes, probe.thresholds_),
        counts=SplitCounts(
            n_train=len(Y["train"]),
            n_val=val.n,
            n_test=len(Y["test"]),
            n_skipped=len(skipped),
            skipped=skipped_rows(skipped),
            classes=list(ds.classes),
        ),
        backbone=fx.card_.name,
        weights_sha256=fx.card_.weights_sha256,
        layer=config.layer,
        pool=config.pool,
        C=float(probe.C),
        dataset={"path": ds.root, "source": ds.source, "split": ds.split_note},
        n_cached=n_cached,
        stage_seconds={
            "load_backbone": round(t_load - t0, 3),
            "extract": round(t_extract - t_load, 3),
            "probe": round(t_probe - t_extract, 3),
        },
        test=test,
    )
    model_dir = TransferModel(fx, probe, metrics.to_dict(), classes=ds.classes).save(
        out / "model", overwrite=config.overwrite
    )
    metrics.seconds = round(time.perf_counter() - t0, 3)
    report = write_fit_multilabel_report(out, ds, metrics)
    return RunResult.written(metrics, out, model_dir=model_dir, report=report, skipped=skipped)


def fit(config: FitConfig, dataset: Dataset | None = None) -> RunResult:
    """Deprecated name of `run_fit` (a loaded `dataset` goes in ``FitConfig.data`` now)."""
    warn_once("transferlab.pipeline.fit", "transferlab.pipeline.run_fit")
    return run_fit(replace(config, data=dataset) if dataset is not None else config)
