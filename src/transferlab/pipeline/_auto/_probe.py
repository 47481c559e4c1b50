"""`auto`'s first stages, on the training images only: what the data is (`check_data`), and
which backbone x layer transfers (`rank_and_probe`: LogME on every tap, then cross-validated
probes of the best few, each also scored on the inner validation images)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferlab.data import Dataset, Sample
from transferlab.pipeline._auto._config import AutoConfig, Candidate
from transferlab.pipeline._shared import default_layers, features_of

__all__ = [
    "FEW_SHOT",
    "BackboneFeatures",
    "check_data",
    "cv_score",
    "inner_score",
    "labels_of",
    "rank_and_probe",
    "score",
]

#: images per class below which no fine-tune is tried (the `diagnose` rule)
FEW_SHOT = 20


def score(metric: str, y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """The comparison metric (`AutoConfig.metric`) of predictions."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    fn = balanced_accuracy_score if metric == "balanced_accuracy" else accuracy_score
    return float(fn(np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)))


def check_data(ds: Dataset) -> dict[str, Any]:
    """Sizes, classes, modes, image sizes, imbalance and too-few-images findings of the
    training images (the other splits are only counted)."""
    from transferlab.diagnose import IMBALANCE, image_statistics

    counts = Counter(str(s.label) for s in ds.train)
    stats = image_statistics([s.path for s in ds.train], max_images=300).to_dict()
    findings: list[dict[str, str]] = []

    def say(code: str, severity: str, message: str) -> None:
        findings.append({"code": code, "severity": severity, "message": message})

    smallest, largest = min(counts.values()), max(counts.values())
    say(
        "sizes",
        "ok",
        f"{len(ds.train)} training images in {len(ds.classes)} classes "
        f"({', '.join(f'{c} {counts.get(c, 0)}' for c in ds.classes)}); {len(ds.val)} validation"
        + (f", {len(ds.test)} test" if ds.test else "")
        + f" ({ds.split_note})",
    )
    if smallest < FEW_SHOT:
        say(
            "few_images",
            "warning",
            f"the smallest class has {smallest} training images (< {FEW_SHOT}): too few to "
            "fine-tune safely, so only probes are tried",
        )
    if largest / smallest >= IMBALANCE:
        say(
            "class_imbalance",
            "warning",
            f"classes are imbalanced ({largest} vs {smallest} images); compare by "
            "--metric balanced_accuracy if every class matters equally",
        )
    modes = stats.get("modes", {})
    if len(modes) > 1 or (modes and next(iter(modes)) != "RGB"):
        say("modes", "info", f"image modes {modes}: converted to RGB for the backbone")
    if stats.get("greyscale_fraction", 0) >= 0.5:
        say("greyscale", "info", "most images are greyscale")
    side = stats.get("median_min_side", 0)
    say(
        "image_size",
        "info" if side >= 64 else "warning",
        f"median image {stats.get('median_width', 0):.0f} x {stats.get('median_height', 0):.0f} px"
        + ("; tiny images: a smaller input size is tried" if side < 64 else ""),
    )
    if stats.get("n_failures"):
        say("broken", "warning", f"{stats['n_failures']} images could not be read; skipped")
    return {
        "class_counts": dict(counts),
        "n_train": len(ds.train),
        "n_val": len(ds.val),
        "n_test": len(ds.test),
        "image_stats": stats,
        "findings": findings,
    }


@dataclass
class BackboneFeatures:
    """One backbone's features of the training images at every tap (rows: `samples`)."""

    name: str
    extractor: Any
    samples: list[Sample]
    features: dict[str, np.ndarray]
    input_size: int
    seconds: float


def labels_of(samples: Sequence[Sample]) -> np.ndarray:
    """The samples' labels as text (the probes' targets)."""
    return np.asarray([str(s.label) for s in samples], dtype=object)


def cv_score(config: AutoConfig, X: np.ndarray, y: np.ndarray) -> float:
    """The cross-validated `AutoConfig.metric` of a probe on `X`, `y` (out-of-fold)."""
    from transferlab.probe import oof_proba

    proba, cls = oof_proba(X, y, config.cv, config.seed)
    return round(score(config.metric, y, cls[proba.argmax(1)]), 4)


def inner_score(
    config: AutoConfig, X: np.ndarray, y: np.ndarray, samples: Sequence[Sample], inner: set[str]
) -> float:
    """The `AutoConfig.metric` on the inner validation images (the `samples` not in `inner`,
    the inner training paths) of a probe fitted on the others: what fine-tunes are compared
    with on the same images."""
    from transferlab.probe import LinearProbe

    fit_rows = np.array([s.path in inner for s in samples])
    probe = LinearProbe().fit(X[fit_rows], y[fit_rows])
    return round(score(config.metric, y[~fit_rows], probe.predict(X[~fit_rows])), 4)


def _extract(config: AutoConfig, name: str, train: list[Sample]) -> BackboneFeatures:
    t = time.perf_counter()
    fx = config.extractor(name, weights=config.weights).fit()
    layers = default_layers(fx.card_)
    feats, index, _ = features_of(fx, [s.path for s in train], layers)
    size = int(fx.card_.preprocessing()["input_size"][-1])
    return BackboneFeatures(
        name, fx, [train[i] for i in index], feats, size, time.perf_counter() - t
    )


def rank_and_probe(
    config: AutoConfig,
    train: list[Sample],
    inner_train: set[str],
    deadline: float,
    share: float,
    step: Callable[[str], None],
) -> tuple[list[BackboneFeatures], list[Candidate]]:
    """Features of `train` from each backbone that fits `share` of the time to `deadline`
    (the first always runs), LogME per tap, then the `max_probes` best pairs probed: 5-fold
    out-of-fold score on all training images and a score on the inner validation images (the
    training images not in `inner_train`) from a probe fitted on the others."""
    from transferlab.diagnose import logme

    start = time.monotonic()
    allowed = share * max(0.0, deadline - start)
    done: list[BackboneFeatures] = []
    rows: list[Candidate] = []
    for name in config.backbones:
        if done:
            spent = time.monotonic() - start
            prev = done[-1]
            est = prev.seconds * 1.5  # a larger network: more pixels and deeper
            if spent + est > allowed:
                rows.append(
                    Candidate(
                        f"probe {name}",
                        "probe",
                        name,
                        why=f"not ranked: extracting its features (about {est:.0f} s) would pass "
                        f"the ranking's share of the budget ({allowed:.0f} s)",
                    )
                )
                continue
        step(f"features of {len(train)} training images from {name} (every tap)")
        bf = _extract(config, name, train)
        done.append(bf)
        y = labels_of(bf.samples)
        for layer, X in bf.features.items():
            rows.append(
                Candidate(
                    f"probe {name}/{layer}",
                    "probe",
                    name,
                    layer=layer,
                    logme=round(float(logme(X, y)), 4),
                )
            )
    ranked = sorted(
        (r for r in rows if r.logme is not None), key=lambda r: r.logme or 0.0, reverse=True
    )
    by_name = {bf.name: bf for bf in done}
    step(f"cross-validated probes of the {min(config.max_probes, len(ranked))} best by LogME")
    for i, row in enumerate(ranked):
        if i >= config.max_probes:
            row.why = f"LogME {row.logme:.3f}: not among the {config.max_probes} best probed"
            continue
        t = time.perf_counter()
        bf = by_name[row.backbone]
        X = bf.features[str(row.layer)]
        y = labels_of(bf.samples)
        row.cv_score = cv_score(config, X, y)
        row.inner_score = inner_score(config, X, y, bf.samples, inner_train)
        row.seconds = round(time.perf_counter() - t, 2)
        row.status = "kept"
        row.why = (
            f"LogME {row.logme:.3f}; {config.cv}-fold probe {row.cv_score:.3f} on the training "
            f"images, {row.inner_score:.3f} on the inner validation images"
        )
    return done, rows
