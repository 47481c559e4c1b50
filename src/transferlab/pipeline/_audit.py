"""`run_audit`: know the data before training on it (issue 19): duplicates and leakage across
splits, likely label errors, outliers, class imbalance and image problems, from one decode of
every image and the (cached) features of a few backbones."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.progress import progress
from transferlab._internal.rundir import prepare_out
from transferlab.data import Sample
from transferlab.exceptions import DatasetError
from transferlab.pipeline._results import Metrics, RunResult
from transferlab.pipeline._shared import DataSource, ExtractorSettings, check_min, resolve_dataset

__all__ = ["AUDIT_BACKBONES", "AuditConfig", "AuditMetrics", "run_audit"]

#: the three packaged backbones: their concatenated features find 74-83% of flipped labels
#: where lite0 alone finds 67% (RESULTS.md issue 19), and they run offline
AUDIT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@dataclass(frozen=True)
class AuditConfig(ExtractorSettings):
    """Everything `run_audit` needs.

    Attributes:
        data: dataset folder or CSV (see `load_dataset`), or a `Dataset`.
        out: where audit.json and report.html go.
        backbones: whose `layer` features are concatenated for label errors and outliers; the
            first one's also find near-duplicates.
        cv: folds of the out-of-fold probe that ranks label errors.
        max_shown: findings of each kind drawn in the report (audit.json lists them all).
    """

    data: DataSource
    out: str | os.PathLike[str]
    backbones: Sequence[str] = AUDIT_BACKBONES
    layer: str = "pre_logits"
    weights: str = "default"
    batch_size: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    no_cache: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    cv: int = 5
    max_shown: int = 40
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.backbones:
            raise DatasetError("--backbones: name at least one backbone")
        check_min("--cv", self.cv, 2)
        check_min("--max-shown", self.max_shown, 1)


@dataclass(kw_only=True)
class AuditMetrics(Metrics):
    """audit.json: every finding with every file path, worst first within each kind."""

    FILE = "audit.json"
    dataset: dict[str, Any]
    splits: dict[str, dict[str, int]]
    backbones: list[str]
    layer: str
    exact_duplicates: list[dict[str, Any]]
    near_duplicates: list[dict[str, Any]]
    leakage: dict[str, Any]
    label_issues: list[dict[str, Any]]
    label_issues_note: str
    outliers: list[dict[str, Any]]
    outlier_threshold: float | None
    imbalance: dict[str, Any]
    image_problems: dict[str, Any]
    findings: list[dict[str, Any]]
    thresholds: dict[str, float]
    n_images: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def run_audit(config: AuditConfig) -> RunResult:
    """Audit a labelled dataset: audit.json (machine-readable, every path) and report.html
    (thumbnails side by side, worst first). Nothing is trained or changed; broken images are
    reported, not fatal.

    Raises:
        DatasetError: the data cannot be loaded (see `load_dataset`).
    """
    from transferlab.diagnose import (
        NEAR_DUPLICATE_SIMILARITY,
        THUMBNAIL_SIMILARITY,
        exact_duplicates,
        near_duplicates,
        scan_images,
    )

    cfg = config
    t0 = time.perf_counter()
    ds = resolve_dataset(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    out = Path(cfg.out)
    prepare_out(out, cfg.overwrite)
    splits = {n: s for n, s in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if s}
    rows: list[tuple[Sample, str]] = [(s, n) for n, ss in splits.items() for s in ss]
    paths = [s.path for s, _ in rows]
    with progress(len(paths), "reading images", cfg.progress) as bar:
        scan = scan_images(paths, progress=bar.update)
    exact, broken = exact_duplicates(splits, scan=scan)
    decoded = [rows[k] for k in scan.ok]
    near = near_duplicates(scan.thumbnails, decoded, threshold=THUMBNAIL_SIMILARITY, exclude=exact)
    for g in near:
        g.kind = "near (thumbnail)"
    t_scan = time.perf_counter()

    feats, use = _features(cfg, [s.path for s, _ in decoded])
    t_feat = time.perf_counter()
    kept = [decoded[k] for k in use]
    known = [set(g.paths) for g in exact + near]
    by_features = [
        g
        for g in near_duplicates(
            feats[0], kept, threshold=NEAR_DUPLICATE_SIMILARITY, exclude=exact + near
        )
        if not any(set(g.paths) <= k for k in known)
    ]
    for g in by_features:
        g.kind = "near (features)"
    near = sorted(near + by_features, key=lambda g: (not g.cross_split, -len(g.paths)))

    issues, note = _label_issues(ds, kept, np.hstack(feats), cfg)
    t_labels = time.perf_counter()
    unit = np.hstack(
        [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for f in feats]
    )
    odd, threshold = _outliers(unit, kept)
    problems = _problems(scan)
    imbalance = _imbalance(ds, splits)
    leaked = [g for g in exact + near if g.cross_split]
    leakage = {
        "groups": len(leaked),
        "images_outside_train": sum(sum(1 for s in g.splits if s != "train") for g in leaked),
        "exact_groups": sum(1 for g in leaked if g.kind == "exact"),
        "near_groups": sum(1 for g in leaked if g.kind != "exact"),
    }
    metrics = AuditMetrics(
        dataset={"path": ds.root, "source": ds.source, "split": ds.split_note},
        splits={
            n: dict(sorted(Counter(str(s.label) for s in ss).items())) for n, ss in splits.items()
        },
        backbones=list(cfg.backbones),
        layer=cfg.layer,
        exact_duplicates=[g.to_dict() for g in exact],
        near_duplicates=[g.to_dict() for g in near],
        leakage=leakage,
        label_issues=issues,
        label_issues_note=note,
        outliers=odd,
        outlier_threshold=threshold,
        imbalance=imbalance,
        image_problems={**problems, "broken": [{"path": p, "reason": r} for p, r in broken]},
        findings=[],
        thresholds={
            "thumbnail_similarity": THUMBNAIL_SIMILARITY,
            "feature_similarity": NEAR_DUPLICATE_SIMILARITY,
        },
        n_images=len(paths),
        seconds=0.0,
    )
    metrics.findings = [f.to_dict() for f in _findings(metrics, str(cfg.data))]
    t_end = time.perf_counter()
    metrics.stage_seconds = {
        "read_images": round(t_scan - t0, 3),
        "features": round(t_feat - t_scan, 3),
        "label_issues": round(t_labels - t_feat, 3),
        "rest": round(t_end - t_labels, 3),
    }
    metrics.seconds = round(t_end - t0, 3)
    from transferlab.report import write_audit_report

    report = write_audit_report(out, metrics, max_shown=cfg.max_shown)
    return RunResult.written(metrics, out, report=report)


def _features(cfg: AuditConfig, paths: list[str]) -> tuple[list[np.ndarray], list[int]]:
    """Each backbone's features of `paths` (cached ones reused), restricted to the positions
    every backbone could read."""
    results = []
    for name in cfg.backbones:
        fx = cfg.extractor(backbone=name, layer=cfg.layer)
        results.append(fx.extract(paths, on_error="skip"))
    common = sorted(set.intersection(*(set(r.index.tolist()) for r in results)))
    if len(common) < 3:
        raise DatasetError(f"{cfg.data}: fewer than 3 readable images, nothing to audit")
    feats = []
    for r in results:
        pos = {int(i): k for k, i in enumerate(r.index)}
        feats.append(r.features[cfg.layer][[pos[i] for i in common]])
    return feats, common


def _label_issues(
    ds: Any, kept: list[tuple[Sample, str]], X: np.ndarray, cfg: AuditConfig
) -> tuple[list[dict[str, Any]], str]:
    """Likely label errors over every labelled image of every split (each one scored by a probe
    trained on the other folds), with why none were looked for where they were not."""
    from transferlab.diagnose import label_issue_C, label_issues

    if ds.multi_label:
        return [], "not looked for: multi-label data (the ranking is for one label per image)"
    counts = Counter(str(s.label) for s, _ in kept)
    small = sorted(c for c, n in counts.items() if n < cfg.cv)
    if len(counts) < 2 or small:
        why = (
            "fewer than 2 classes"
            if len(counts) < 2
            else f"class(es) {', '.join(small)} have fewer than {cfg.cv} images"
        )
        return [], f"not looked for: {why} (the {cfg.cv}-fold probe needs them)"
    y = [str(s.label) for s, _ in kept]
    found = label_issues(X, y, cv=cfg.cv, seed=cfg.seed)
    rows = [
        {"path": kept[i.index][0].path, "split": kept[i.index][1], **i.to_dict()} for i in found
    ]
    for r in rows:
        del r["index"]
    return rows, (
        f"{len(rows)} of {len(y)} labelled images flagged by cleanlab on {cfg.cv}-fold "
        f"out-of-fold probabilities (C={label_issue_C(len(y)):.3g}), lowest probability of the given label first"
    )


def _outliers(X: np.ndarray, kept: list[tuple[Sample, str]]) -> tuple[list[dict[str, Any]], float]:
    from transferlab.diagnose import outliers

    o = outliers(X)
    return [
        {
            "path": kept[i][0].path,
            "split": kept[i][1],
            "label": str(kept[i][0].label),
            "score": round(float(o.scores[i]), 4),
        }
        for i in o.flagged
    ], round(o.threshold, 4)


def _problems(scan: Any) -> dict[str, Any]:
    from transferlab.diagnose import image_problems

    return image_problems(scan)


def _imbalance(ds: Any, splits: dict[str, list[Sample]]) -> dict[str, Any]:
    from transferlab.diagnose import IMBALANCE

    counts = Counter(str(s.label) for s in ds.train)
    smallest, largest = min(counts.values()), max(counts.values())
    missing = {
        n: sorted(set(ds.classes) - {str(s.label) for s in ss})
        for n, ss in splits.items()
        if n != "train"
    }
    return {
        "train_counts": dict(sorted(counts.items())),
        "ratio": round(largest / max(smallest, 1), 3),
        "imbalanced": largest / max(smallest, 1) >= IMBALANCE,
        "classes_missing": {n: m for n, m in missing.items() if m},
    }


def _findings(m: AuditMetrics, data: str) -> list[Any]:
    """The plain-language findings, worst first."""
    from transferlab.diagnose import Finding

    out: list[Finding] = []
    lk = m.leakage
    if lk["exact_groups"]:
        out.append(
            Finding(
                "leakage",
                "problem",
                f"{lk['exact_groups']} group(s) of identical images span splits (leakage)",
                dict(lk),
                "Scores measured on these images are inflated: the model has seen them. Delete "
                "the held-out copy of each group under 'duplicates across splits' before "
                "trusting a validation score.",
            )
        )
    if lk["near_groups"]:
        out.append(
            Finding(
                "possible_leakage",
                "warning",
                f"{lk['near_groups']} group(s) of near-identical images span splits",
                dict(lk),
                "Look at them side by side under 'duplicates across splits': re-saved or resized "
                "copies are leakage (delete the held-out copy); similar but distinct photos on a "
                "plain background can reach the threshold too.",
            )
        )
    conflict = [g for g in m.exact_duplicates + m.near_duplicates if g["label_conflict"]]
    if conflict:
        out.append(
            Finding(
                "duplicate_label_conflict",
                "problem",
                f"{len(conflict)} group(s) of copies carry different labels",
                {"groups": len(conflict)},
                "At least one label in each such group is wrong; fix it or drop the copy.",
            )
        )
    if m.label_issues:
        top = m.label_issues[0]
        out.append(
            Finding(
                "label_issues",
                "warning",
                f"{len(m.label_issues)} image(s) may be mislabelled",
                {"n": len(m.label_issues), "worst": top},
                "Look at them worst first (report.html); where the suggested label is right, "
                "move the file; a probe on corrected labels is rarely worse.",
            )
        )
    within = [g for g in m.exact_duplicates + m.near_duplicates if not g["cross_split"]]
    if within:
        out.append(
            Finding(
                "duplicates",
                "warning",
                f"{len(within)} group(s) of duplicate images within a split",
                {"groups": len(within), "images": sum(len(g["paths"]) for g in within)},
                "Each copy weighs its picture twice in training; keep one of each group.",
            )
        )
    if m.outliers:
        out.append(
            Finding(
                "outliers",
                "info",
                f"{len(m.outliers)} image(s) lie far from every other image",
                {"n": len(m.outliers), "threshold": m.outlier_threshold},
                "Check that they belong to this task (a stray screenshot, another domain); "
                "keep rare but real cases, they are what a test will hold too.",
            )
        )
    ib = m.imbalance
    if ib["imbalanced"]:
        out.append(
            Finding(
                "class_imbalance",
                "warning",
                f"classes are imbalanced ({ib['ratio']:.1f}x between largest and smallest)",
                dict(ib),
                "Compare models by balanced accuracy and weight the classes in the probe.",
                [f"transferlab fit {data} --class-weight balanced"],
            )
        )
    if ib["classes_missing"]:
        out.append(
            Finding(
                "classes_missing",
                "warning",
                "some classes have no image in a held-out split",
                ib["classes_missing"],
                "Their accuracy is not measured; add held-out images of each class.",
            )
        )
    ip = m.image_problems
    for key, sev, title, advice in (
        ("broken", "problem", "file(s) cannot be decoded", "Every run skips them; fix or delete them."),
        ("tiny", "warning", "image(s) are under 32 px on a side", "They are upscaled many times; check they are not thumbnails by mistake."),
        ("extreme_aspect", "info", "image(s) have an aspect ratio of 3:1 or more", "A centre crop drops most of each; pad or crop them by hand."),
        ("odd_modes", "info", "image(s) have another colour mode than the rest", "They are converted to RGB; check that greyscale or transparent images are expected."),
    ):  # fmt: skip
        if ip[key]:
            out.append(Finding(key, sev, f"{len(ip[key])} {title}", {"n": len(ip[key])}, advice))
    if ip["all_tiny"]:
        out.append(
            Finding(
                "all_tiny",
                "info",
                f"the images are small (median {ip['median_size'][0]} x {ip['median_size'][1]} px)",
                {"median_size": ip["median_size"]},
                "Backbones see them upscaled; a smaller input size fine-tunes faster for the same "
                "accuracy (see `transferlab diagnose`).",
            )
        )
    if not out:
        out.append(
            Finding(
                "clean",
                "ok",
                "No duplicate, leakage, likely label error or image problem found",
                {},
                "Train as usual.",
                [f"transferlab auto {data}"],
            )
        )
    return out
