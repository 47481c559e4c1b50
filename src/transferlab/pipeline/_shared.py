"""What several runs share: config checks, how a config builds its feature extractor, the
metrics every classifier run reports, the temperature-scaling summary, and how a run reads its
data and output folder."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.data import Dataset, Sample, load_dataset, stratified_subsample
from transferlab.exceptions import InvalidParameterError, TransferlabError
from transferlab.features._cache import cache_setting

if TYPE_CHECKING:  # scikit-learn comes with these: imported where they run (issue 17)
    from transferlab.evaluate import EvalReport
    from transferlab.features import FeatureExtractor
from transferlab.pipeline._results import FLATTEN, OMIT_NONE, Metrics, json_key

__all__ = [
    "ClassifierMetrics",
    "ExtractorSettings",
    "MultiLabelScores",
    "SplitCounts",
    "calibrate",
    "check_choice",
    "check_min",
    "default_layers",
    "eval_block",
    "extract_splits",
    "features_of",
    "labelled_sample",
    "leakage_note",
    "resolve_dataset",
    "skipped_rows",
    "subsample",
]

DataSource = str | os.PathLike[str] | Dataset


def check_choice(name: str, value: Any, choices: Iterable[Any], *, wording: str = "") -> None:
    """Refuse a setting outside `choices` (one message shape for every config)."""
    choices = tuple(choices)
    if value not in choices:
        allowed = wording or f"one of {', '.join(str(c) for c in choices)}"
        raise InvalidParameterError(f"{name} must be {allowed}, got {value!r}")


def check_min(name: str, value: float | None, low: float) -> None:
    """Refuse a number below `low` (None passes: 'no limit')."""
    if value is not None and value < low:
        raise InvalidParameterError(f"{name} must be >= {low}, got {value}")


#: config fields passed to `FeatureExtractor` under the same name, by the configs that have them
_EXTRACTOR_FIELDS = (
    "layer",
    "precision",
    "pool",
    "weights",
    "batch_size",
    "num_workers",
    "device",
    "progress",
    "max_pixels",
)


class ExtractorSettings:
    """Mixin of the run configs that carry feature-extractor settings, so that every run builds
    its `FeatureExtractor` one way. Each config declares only the fields its run exposes
    (`backbone`, `layer`, `cache_dir`, ...); the extractor's own defaults stand for the others."""

    def extractor(self, backbone: Any = None, **overrides: Any) -> FeatureExtractor:
        """The extractor of `backbone` (a name or loaded `Backbone`; None: the config's) with the
        config's settings; `overrides` replace some of them. ``cache`` comes from ``no_cache``
        and ``cache_dir`` when the config has ``cache_dir``."""
        given = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        kwargs = {name: given[name] for name in _EXTRACTOR_FIELDS if name in given}
        if "cache_dir" in given:
            kwargs["cache"] = cache_setting(given["cache_dir"], bool(given.get("no_cache")))
        from transferlab.features import FeatureExtractor

        return FeatureExtractor(
            given["backbone"] if backbone is None else backbone, **{**kwargs, **overrides}
        )


def leakage_note(
    ds: Dataset,
    *,
    vectors: Mapping[str, np.ndarray] | None = None,
    extractor: FeatureExtractor | None = None,
) -> str | None:
    """The one line `fit`, `finetune` and `auto` print when train and val/test share images:
    with `vectors` (path -> the run's own features), pairs of equal features; otherwise the
    same file, or equal features where `extractor`'s cache already holds both (nothing is
    computed). A check: it never fails the run."""
    from transferlab.diagnose import cross_split_twins, leakage_line

    splits = {n: s for n, s in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if s}
    if len(splits) < 2:
        return None
    if vectors is None and extractor is not None:
        try:
            res = extractor.extract(
                [s.path for ss in splits.values() for s in ss], cached_only=True
            )
            vectors = dict(zip(res.paths, res.features[extractor.layer], strict=True))
        except TransferlabError:  # e.g. a backbone the cache cannot key: the digests remain
            vectors = None
        return leakage_line(cross_split_twins(splits, vectors), ds.root)
    return leakage_line(cross_split_twins(splits, vectors, file_digests=False), ds.root)


def resolve_dataset(
    data: DataSource, *, val_fraction: float, seed: int, multi_label: bool = False
) -> Dataset:
    """`data` as a `Dataset`: loaded from a folder or CSV, or used as given."""
    if isinstance(data, Dataset):
        return data
    return load_dataset(data, val_fraction=val_fraction, seed=seed, multi_label=multi_label)


def skipped_rows(skipped: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"path": p, "reason": r} for p, r in skipped]


def eval_block(report: EvalReport) -> dict[str, Any]:
    """The ``test`` block of metrics.json."""
    return {
        "accuracy": report.accuracy,
        "balanced_accuracy": report.balanced_accuracy,
        "log_loss": report.log_loss,
        "n": report.n,
        "per_class": report.per_class,
        "confusion": report.confusion,
    }


@dataclass(kw_only=True)
class SplitCounts(Metrics):
    """Images per split, those skipped, and the classes: keys fit and finetune both report."""

    n_train: int
    n_val: int
    n_test: int
    n_skipped: int
    skipped: list[dict[str, str]]
    classes: list[str]


@dataclass(kw_only=True)
class ClassifierMetrics(Metrics):
    """The keys `fit` and `finetune` (single-label) both start metrics.json with."""

    accuracy: float
    balanced_accuracy: float
    log_loss: float
    counts: SplitCounts = field(metadata=FLATTEN)
    per_class: dict[str, dict[str, float]]
    macro: dict[str, float]
    confusion: list[list[int]]
    backbone: str
    weights_sha256: str | None
    layer: str
    #: one line when train and val/test share images (`leakage_note`); absent when none
    leakage: str | None = field(default=None, metadata=OMIT_NONE)

    @staticmethod
    def scores(
        val: EvalReport,
        *,
        n_train: int,
        test: EvalReport | None,
        skipped: Sequence[tuple[str, str]],
        classes: Sequence[str],
    ) -> dict[str, Any]:
        """The validation-derived fields, for ``Subclass(**scores(...), ...)``."""
        return {
            "accuracy": val.accuracy,
            "balanced_accuracy": val.balanced_accuracy,
            "log_loss": val.log_loss,
            "counts": SplitCounts(
                n_train=n_train,
                n_val=val.n,
                n_test=test.n if test is not None else 0,
                n_skipped=len(skipped),
                skipped=skipped_rows(skipped),
                classes=[str(c) for c in classes],
            ),
            "per_class": val.per_class,
            "macro": val.macro,
            "confusion": val.confusion,
        }


@dataclass(kw_only=True)
class MultiLabelScores(Metrics):
    """The keys every multi-label training run reports (fit and finetune alike)."""

    accuracy: float
    mAP: float
    f1_micro: float
    f1_macro: float
    at_half: dict[str, float] = field(metadata=json_key("at_threshold_0.5"))
    thresholds: dict[str, float]
    thresholds_note: str = (
        "tuned on the validation split (F1 per label); at_threshold_0.5 is untuned"
    )
    per_label: dict[str, dict[str, float]]

    @classmethod
    def of(cls, val: Any, classes: Sequence[str], thresholds: np.ndarray) -> MultiLabelScores:
        return cls(
            accuracy=val.subset_accuracy,
            mAP=val.mAP,
            f1_micro=val.f1_micro,
            f1_macro=val.f1_macro,
            at_half=val.at_half,
            thresholds=dict(zip(classes, np.asarray(thresholds).tolist(), strict=True)),
            per_label=val.per_label,
        )


def calibrate(
    probas: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]
) -> dict[str, Any]:
    """Temperature scaling fitted on ``probas["val"]`` (`transferlab.evaluate.calibrate`, the one
    fit), with ECE and log loss before/after on validation (optimistic: T was fitted there) and
    on each other split given, e.g. test (honest); as the metrics.json ``calibration`` block."""
    from transferlab.evaluate import calibrate as fit_temperature

    index = {c: i for i, c in enumerate(classes)}

    def idx(labels: np.ndarray) -> np.ndarray:
        return np.array([index[str(v)] for v in labels])

    proba, labels = probas["val"]
    also = {name: (p, idx(lab)) for name, (p, lab) in probas.items() if name != "val"}
    return fit_temperature(proba, idx(labels), also=also).to_dict()


def subsample(samples: Sequence[Sample], n: int | None, seed: int) -> list[Sample]:
    """At most `n` samples, stratified by label (every class keeps its share, at least 2)."""
    samples = sorted(samples, key=lambda s: s.path)
    if n is None or len(samples) <= n:
        return list(samples)
    labels = [s.label for s in samples]
    idx = stratified_subsample(
        labels, n, min_per_class=2, classes=list(dict.fromkeys(labels)), seed=seed, draw_whole=True
    )
    return [samples[i] for i in idx]


def labelled_sample(
    data: str | os.PathLike[str], val_fraction: float, seed: int, max_images: int | None
) -> tuple[Dataset, list[Sample]]:
    """The single-label dataset and a stratified draw of its train + val images (diagnose, rank)."""
    ds = load_dataset(data, val_fraction=val_fraction, seed=seed)
    if ds.multi_label:
        raise InvalidParameterError("diagnosis and ranking need single-label data")
    return ds, subsample([*ds.train, *ds.val], max_images, seed)


def extract_splits(
    fx: FeatureExtractor, splits: dict[str, Sequence[Sample]], *, on_error: str
) -> tuple[Any, dict[str, np.ndarray], dict[str, list[Sample]]]:
    """Features of several splits in one extraction pass at ``fx.layer``: the extraction result
    (failures, cache hits), and per split the feature rows and the samples they belong to (the
    images that decoded)."""
    names = list(splits)
    samples = [s for name in names for s in splits[name]]
    res = fx.extract([s.path for s in samples], on_error=on_error)
    rows = res.rows_of([name for name in names for _ in splits[name]], names)
    of_row = res.select(samples)
    X = res.features[fx.layer]
    return (
        res,
        {name: X[r] for name, r in rows.items()},
        {name: [of_row[i] for i in r] for name, r in rows.items()},
    )


def default_layers(bb: Any) -> list[str]:
    """Every tap but the logits."""
    return [la for la in bb.layers if la != "logits"]


def features_of(
    fx: Any, paths: Sequence[str], layers: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[Any]]:
    """Features of `paths` at `layers` (broken images skipped): features, row index, failures."""
    res = fx.extract(paths, layers=list(layers), on_error="skip")
    return res.features, res.index, res.failures


def int8_summary(fx: FeatureExtractor) -> dict[str, Any] | None:
    """What an int8 run's metrics say of its quantisation: the fidelity to fp32 measured when the
    export was made, and on which images; None for other precisions."""
    q = getattr(fx, "quantization_", None)
    if fx.precision != "int8" or not q:
        return None
    fid, quant = q["fidelity"], q["quantization"]
    return {
        "mean_cosine_to_fp32": min(fid["mean_cosine"].values()),
        "min_cosine_to_fp32": min(fid["min_cosine"].values()),
        "fidelity_images": fid["images"],
        "fidelity_measured_on": q.get("fidelity_images"),
        "calibration_images": quant["calibration_images"],
        "method": quant["method"],
        "kept_float_nodes": len(quant["kept_float"]),
    }
