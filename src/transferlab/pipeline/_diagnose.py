"""`diagnose_run`, `rank_run` and `adapt_bn_run`: will transfer work on this data, with which
backbone and layer, how much to retrain, and why it fails when it does."""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.json import json_default as _json_default
from transferlab._internal.rundir import prepare_out as _prepare_out
from transferlab.backbones import Backbone, load_backbone
from transferlab.data import DEFAULT_MAX_PIXELS, Sample, list_images, load_dataset
from transferlab.exceptions import DatasetError, DatasetNotFoundError, InvalidParameterError
from transferlab.features import FeatureExtractor
from transferlab.pipeline._core import FitResult

__all__ = ["DiagnoseConfig", "RankResult", "adapt_bn_run", "diagnose_run", "rank_run"]

logger = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _subsample(samples: Sequence[Sample], n: int | None, seed: int) -> list[Sample]:
    """At most `n` samples, stratified by label (every class keeps its share, at least 2)."""
    samples = sorted(samples, key=lambda s: s.path)
    if n is None or len(samples) <= n:
        return list(samples)
    rng = np.random.default_rng(seed)
    by: dict[str, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.label, []).append(s)
    out: list[Sample] = []
    for items in by.values():
        k = max(2, round(n * len(items) / len(samples)))
        idx = rng.choice(len(items), min(k, len(items)), replace=False)
        out += [items[i] for i in sorted(idx)]
    return out


def _labelled(
    data: str | os.PathLike[str], val_fraction: float, seed: int, max_images: int | None
) -> tuple[Any, list[Sample]]:
    ds = load_dataset(data, val_fraction=val_fraction, seed=seed)
    if ds.multi_label:
        raise InvalidParameterError("diagnosis and ranking need single-label data")
    return ds, _subsample([*ds.train, *ds.val], max_images, seed)


def _default_layers(bb: Backbone) -> list[str]:
    return [la for la in bb.layers if la != "logits"]


def _features(
    fx: FeatureExtractor, paths: Sequence[str], layers: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[Any]]:
    res = fx.extract(paths, layers=list(layers), on_error="skip")
    return res.features, res.index, res.failures


def _reference_paths(reference: str | os.PathLike[str] | None) -> tuple[list[str], str]:
    from transferlab.diagnose import default_reference

    if reference is None:
        return (
            default_reference(),
            "built-in natural photos (scikit-image, scikit-learn, matplotlib samples)",
        )
    ref = Path(reference)
    if not ref.exists():
        raise DatasetNotFoundError(f"--reference {ref}: no such file or folder")
    paths, _ = list_images(ref)
    if len(paths) < 4:
        raise DatasetError(f"--reference {ref}: needs at least 4 images, found {len(paths)}")
    return paths, str(ref)


# ---------------------------------------------------------------------------------------------
# diagnose
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagnoseConfig:
    """Settings of `diagnose_run`; CLI flags map one-to-one onto these fields.

    Attributes:
        data: labelled dataset (see `load_dataset`); train and validation images are both used.
        out: folder for diagnosis.json, plots and report.html.
        backbone, weights: the network to diagnose.
        reference: folder of reference images (None: the built-in natural photos).
        layers: taps to probe (None: all but the logits).
        max_images: labelled images used at most (a stratified draw); features are cached, so a
            later run on the same images is quick.
        bn_images: images used to measure BatchNorm statistics (each side).
        adabn: ``"auto"`` measures AdaBN's effect on the probe when a low-level shift is found;
            ``"on"`` always, ``"off"`` never.
        cv: folds of the cross-validated probes.
        compare: other backbones to score against `backbone` (LogME and kNN on their pre-logits
            features of the same images), for a backbone recommendation.
    """

    data: str
    out: str
    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    reference: str | None = None
    layers: tuple[str, ...] | None = None
    max_images: int | None = 2000
    bn_images: int = 256
    adabn: str = "auto"
    cv: int = 5
    compare: tuple[str, ...] = ()
    seed: int = 0
    val_fraction: float = 0.2
    batch_size: int = 32
    device: str = "auto"
    cache_dir: str | None = None
    no_cache: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.adabn not in ("auto", "on", "off"):
            raise InvalidParameterError(f"adabn must be auto, on or off, got {self.adabn!r}")
        if self.max_images is not None and self.max_images < 8:
            raise InvalidParameterError(f"max_images must be >= 8, got {self.max_images}")
        if self.bn_images < 8:
            raise InvalidParameterError(f"bn_images must be >= 8, got {self.bn_images}")
        if self.cv < 2:
            raise InvalidParameterError(f"cv must be >= 2, got {self.cv}")


def diagnose_run(
    config: DiagnoseConfig,
    *,
    transform: Callable[[Any], Any] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> FitResult:
    """Diagnose transfer on `config.data`: layer-wise probing, per-layer scores, domain gap to the
    reference, BatchNorm shift, preprocessing checks and AdaBN; findings with advice.

    Args:
        config: the settings.
        transform: the user's own preprocessing (PIL image -> tensor), checked against the
            backbone's; None checks only the images.
        on_step: called with a short description as each step starts (for progress display).

    Writes ``diagnosis.json``, ``layer_probe.png``, ``domain_gap.png``, ``bn_shift.png`` and
    ``report.html`` to `config.out`.
    """
    from transferlab.diagnose import (
        adapt_bn,
        advise,
        bn_shift,
        check_preprocessing,
        domain_gap,
        hscore,
        image_batches,
        image_statistics,
        knn_accuracy,
        layer_probe,
        logme,
    )
    from transferlab.diagnose._layers import cv_probe_accuracy

    step = on_step or (lambda s: logger.info(s))
    t0 = time.perf_counter()
    cfg = config
    out = Path(cfg.out)
    ds, samples = _labelled(cfg.data, cfg.val_fraction, cfg.seed, cfg.max_images)
    ref_paths, ref_name = _reference_paths(cfg.reference)  # a bad --reference fails before work
    _prepare_out(out, cfg.overwrite)
    cache: Any = False if cfg.no_cache else (cfg.cache_dir or True)
    bb = load_backbone(cfg.backbone, weights=cfg.weights, device=cfg.device)
    layers = list(cfg.layers) if cfg.layers else _default_layers(bb)
    for la in layers:
        bb.check_layer(la)
    fx = FeatureExtractor(
        bb, batch_size=cfg.batch_size, cache=cache, progress=cfg.progress, max_pixels=cfg.max_pixels
    )
    timings: dict[str, float] = {}

    step(f"features of {len(samples)} images from {len(layers)} layers")
    t = time.perf_counter()
    feats, index, failures = _features(fx, [s.path for s in samples], layers)
    kept = [samples[i] for i in index]
    y = np.asarray([s.label for s in kept])
    counts = Counter(y.tolist())
    if len(counts) < 2 or min(counts.values()) < 2:
        raise DatasetError(
            f"{cfg.data}: diagnosis needs at least 2 readable images in each of 2 classes; got "
            f"{dict(counts)}"
        )
    timings["features"] = time.perf_counter() - t

    step("layer-wise probing")
    t = time.perf_counter()
    probe = layer_probe(feats, y, cv=cfg.cv, seed=cfg.seed)
    scores = {
        la: {
            "logme": logme(feats[la], y),
            "hscore": hscore(feats[la], y),
            "knn_accuracy": knn_accuracy(feats[la], y, cv=cfg.cv, seed=cfg.seed),
        }
        for la in layers
    }
    timings["probing"] = time.perf_counter() - t

    step("reference images and domain gap")
    t = time.perf_counter()
    ref_feats, _, _ = _features(fx, ref_paths, layers)
    gap = domain_gap(feats, ref_feats, seed=cfg.seed)
    target_stats = image_statistics([s.path for s in kept]).to_dict()
    ref_stats = image_statistics(ref_paths).to_dict()
    timings["domain_gap"] = time.perf_counter() - t

    step("BatchNorm statistics")
    t = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    bn_idx = sorted(rng.choice(len(kept), min(cfg.bn_images, len(kept)), replace=False))
    bn_paths = [kept[i].path for i in bn_idx]
    shift_t = bn_shift(
        bb, image_batches(bb, bn_paths, batch_size=cfg.batch_size, max_pixels=cfg.max_pixels)
    )
    ref_bn = ref_paths[:: max(1, len(ref_paths) // cfg.bn_images)][: cfg.bn_images]  # spread
    shift_r = bn_shift(bb, image_batches(bb, ref_bn, batch_size=cfg.batch_size))
    timings["bn_shift"] = time.perf_counter() - t

    preprocessing = []
    if transform is not None:
        step("checking the preprocessing")
        preprocessing = [
            asdict(i)
            for i in check_preprocessing(
                bb, [s.path for s in kept[:: max(1, len(kept) // 32)]], transform
            )
        ]

    evidence: dict[str, Any] = {
        "class_counts": dict(counts),
        "target_stats": target_stats,
        "reference_stats": ref_stats,
        "bn_target": shift_t.by_tap(),
        "bn_reference": shift_r.by_tap(),
        "layer_probe": probe.to_dict(),
        "domain_gap": gap.to_dict(),
        "preprocessing": preprocessing,
        "input_size": int(bb.data_config["input_size"][-1]),
        "backbone": bb.name,
        "data": str(cfg.data),
    }
    findings = advise(**evidence)
    adabn_result = None
    low_shift = any(f.code == "domain_shift_low_level" for f in findings)
    if cfg.adabn == "on" or (cfg.adabn == "auto" and low_shift):
        step("AdaBN: probe accuracy with BatchNorm statistics re-estimated on these images")
        t = time.perf_counter()
        sub_idx = np.sort(rng.choice(len(kept), min(1000, len(kept)), replace=False))
        sub = [kept[i] for i in sub_idx]
        adapted = adapt_bn(
            bb,
            image_batches(
                bb, [s.path for s in sub], batch_size=cfg.batch_size, max_pixels=cfg.max_pixels
            ),
        )
        fx_a = FeatureExtractor(
            adapted,
            batch_size=cfg.batch_size,
            cache=cache,
            progress=cfg.progress,
            max_pixels=cfg.max_pixels,
        )
        last = "pre_logits" if "pre_logits" in layers else layers[-1]
        fa, ia, _ = _features(fx_a, [s.path for s in sub], [last])
        ya = [sub[i].label for i in ia]
        before, _ = cv_probe_accuracy(feats[last][sub_idx], y[sub_idx], cv=cfg.cv, seed=cfg.seed)
        after, _ = cv_probe_accuracy(fa[last], ya, cv=cfg.cv, seed=cfg.seed)
        adabn_result = {"layer": last, "before": before, "after": after, "n_images": len(sub)}
        timings["adabn"] = time.perf_counter() - t
        findings = advise(  # again, now that AdaBN's effect is known
            **evidence, adabn={k: v for k, v in adabn_result.items() if k in ("before", "after")}
        )

    backbones = None
    if cfg.compare:
        step(f"comparing backbones: {', '.join((bb.name, *cfg.compare))}")
        t = time.perf_counter()
        paths = [s.path for s in kept]
        backbones = {}
        for name in (bb.name, *[c for c in cfg.compare if c != bb.name]):
            if name == bb.name and "pre_logits" in scores:
                X, yc = feats["pre_logits"], y
            else:
                fx_c = (
                    fx
                    if name == bb.name
                    else FeatureExtractor(
                        name,
                        batch_size=cfg.batch_size,
                        device=cfg.device,
                        cache=cache,
                        progress=cfg.progress,
                        max_pixels=cfg.max_pixels,
                    )
                )
                fc, ic, _ = _features(fx_c, paths, ["pre_logits"])
                X, yc = fc["pre_logits"], y[ic]
            backbones[name] = {
                "logme": logme(X, yc),
                "knn_accuracy": knn_accuracy(X, yc, cv=cfg.cv, seed=cfg.seed),
            }
        timings["compare"] = time.perf_counter() - t
    from transferlab.diagnose._advice import SEVERITIES

    findings.append(_backbone_finding(bb.name, backbones, str(cfg.data)))
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: advise's order kept

    step("plots and report")
    pngs = _diagnosis_plots(out, probe, gap, shift_t, shift_r, scores)
    diagnosis = {
        "dataset": ds.root,
        "backbone": bb.name,
        "weights_sha256": bb.weights_sha256,
        "n_images": len(kept),
        "n_failed": len(failures),
        "class_counts": dict(counts),
        "reference": {"source": ref_name, "n_images": len(ref_paths)},
        "findings": [f.to_dict() for f in findings],
        "layer_probe": probe.to_dict(),
        "scores": {la: {k: round(v, 4) for k, v in s.items()} for la, s in scores.items()},
        "domain_gap": gap.to_dict(),
        "bn_shift": {"target": shift_t.to_dict(), "reference": shift_r.to_dict()},
        "image_stats": {"target": target_stats, "reference": ref_stats},
        "preprocessing": preprocessing,
        "adabn": adabn_result,
        "backbones": backbones,
        "seconds": {
            **{k: round(v, 1) for k, v in timings.items()},
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    (out / "diagnosis.json").write_text(json.dumps(diagnosis, indent=2, default=_json_default))
    report = _write_diagnosis_report(out, diagnosis, pngs)
    return FitResult(metrics=diagnosis, out=out, model_dir=out, report=report, confusion_png=None)


def _backbone_finding(current: str, scores: dict[str, dict[str, float]] | None, data: str) -> Any:
    """Which backbone: from LogME over the compared ones, or how to find out."""
    from transferlab.diagnose import Finding

    if not scores or len(scores) < 2:
        return Finding(
            "backbone_choice",
            "info",
            f"Backbone: {current} (not compared with others)",
            {},
            "To choose among backbones before training, score them on these images; LogME's "
            "order matched the measured probe accuracy with Kendall tau 0.74-0.93 here.",
            [
                f"transferlab rank {data} --verify",
                f"transferlab diagnose {data} --compare efficientnet_lite1,efficientnet_lite2",
            ],
        )
    best = max(scores, key=lambda b: scores[b]["logme"])
    gap = scores[best]["logme"] - scores[current]["logme"]
    if best == current or gap < 0.02:
        return Finding(
            "backbone_choice",
            "ok",
            f"Backbone: {current} scores as well as any compared (LogME)",
            {"logme": {b: round(v["logme"], 4) for b, v in scores.items()}},
            f"Keep {current}; the larger ones would cost time for no expected gain.",
        )
    return Finding(
        "backbone_choice",
        "info",
        f"Backbone: {best} should transfer better than {current} (LogME {scores[best]['logme']:.3f} vs "
        f"{scores[current]['logme']:.3f})",
        {
            "logme": {b: round(v["logme"], 4) for b, v in scores.items()},
            "knn_accuracy": {b: round(v["knn_accuracy"], 4) for b, v in scores.items()},
        },
        f"Try --backbone {best} (bigger input, slower); confirm with rank --verify on your data.",
        [f"transferlab fit {data} --backbone {best}"],
    )


def _diagnosis_plots(
    out: Path, probe: Any, gap: Any, shift_t: Any, shift_r: Any, scores: dict[str, dict[str, float]]
) -> list[tuple[str, Path]]:
    from transferlab._internal.plotting import pyplot as _pyplot
    from transferlab.diagnose import LayerProfileDisplay

    plt = _pyplot()
    pngs = []
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    disp = LayerProfileDisplay.from_layer_probe(probe)
    disp.series["kNN (k=5)"] = [scores[la]["knn_accuracy"] for la in probe.layers]
    disp.plot(ax)
    fig.savefig(out / "layer_probe.png", dpi=100)
    plt.close(fig)
    pngs.append(("Probe accuracy by layer (cross-validated)", out / "layer_probe.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    LayerProfileDisplay(
        gap.layers,
        {"target vs reference": gap.classifier_accuracy},
        ylabel="domain classifier balanced accuracy",
        title="Can a linear classifier tell the domains apart?",
        hline=(0.5, "indistinguishable"),
    ).plot(a1)
    LayerProfileDisplay(
        gap.layers,
        {"MMD²": gap.mmd},
        ylabel="MMD² (Gaussian kernel)",
        title="Distribution distance",
    ).plot(a2)
    fig.savefig(out / "domain_gap.png", dpi=100)
    plt.close(fig)
    pngs.append(("Domain gap to the reference, by layer", out / "domain_gap.png"))

    t, r = shift_t.by_tap(), shift_r.by_tap()
    taps = [k for k in t if k in r]
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    LayerProfileDisplay(
        taps,
        {"target images": [t[k] for k in taps], "reference photos": [r[k] for k in taps]},
        ylabel="BN shift (W2, in running std units)",
        title="BatchNorm statistics vs ImageNet's, by depth",
    ).plot(ax)
    fig.savefig(out / "bn_shift.png", dpi=100)
    plt.close(fig)
    pngs.append(("Shift of BatchNorm statistics from the pretrained ones", out / "bn_shift.png"))
    return pngs


_BADGE = {"problem": "#c62828", "warning": "#ef6c00", "info": "#1565c0", "ok": "#2e7d32"}


def _findings_html(findings: Sequence[dict[str, Any]]) -> str:
    parts = []
    for f in findings:
        colour = _BADGE.get(f["severity"], "#555")
        cmds = "".join(f"<div><code>{html.escape(c)}</code></div>" for c in f.get("commands", []))
        ev = html.escape(json.dumps(f["evidence"], default=_json_default)[:600])
        parts.append(
            f"<div style='border-left:5px solid {colour};padding:.4em .9em;margin:.7em 0;background:#fafafa'>"
            f"<b style='color:{colour}'>{html.escape(f['severity'].upper())}</b> "
            f"<b>{html.escape(f['title'])}</b><p>{html.escape(f['recommendation'])}</p>{cmds}"
            f"<details><summary class='muted'>evidence</summary><code>{ev}</code></details></div>"
        )
    return "".join(parts)


def _write_diagnosis_report(out: Path, d: dict[str, Any], pngs: list[tuple[str, Path]]) -> Path:
    from transferlab.report import html_table, write_html_report

    lp = d["layer_probe"]["layers"]
    gap = d["domain_gap"]["layers"]
    rows = [
        [
            la,
            v["dim"],
            v["accuracy"],
            d["scores"][la]["knn_accuracy"],
            d["scores"][la]["logme"],
            gap.get(la, {}).get("classifier_accuracy", float("nan")),
            gap.get(la, {}).get("mmd", float("nan")),
        ]
        for la, v in lp.items()
    ]
    table = html_table(
        ["layer", "dim", "probe acc", "kNN acc", "LogME", "domain clf acc", "MMD²"], rows
    )
    ts, rs = d["image_stats"]["target"], d["image_stats"]["reference"]
    stats = html_table(
        ["", "target", "reference"],
        [
            [k, json.dumps(ts[k]), json.dumps(rs[k])]
            for k in (
                "n",
                "greyscale_fraction",
                "channel_mean",
                "channel_std",
                "median_width",
                "median_height",
                "median_aspect",
                "modes",
            )
        ],
    )
    problems = [f for f in d["findings"] if f["severity"] in ("problem", "warning")]
    return write_html_report(
        out / "report.html",
        title=f"transferlab diagnose — {Path(d['dataset']).name}",
        summary={
            "verdict": problems[0]["title"]
            if problems
            else "No problem found: transfer should work as is",
            "backbone": d["backbone"],
            "cut point (shallowest layer within noise of the peak)": (
                f"{d['layer_probe']['best_layer']} (peak: {d['layer_probe']['peak_layer']} "
                f"{d['layer_probe']['layers'][d['layer_probe']['peak_layer']]['accuracy']:.3f})"
            ),
            "images": f"{d['n_images']} ({len(d['class_counts'])} classes)",
            "reference": d["reference"]["source"],
        },
        sections=[
            ("Findings and advice", _findings_html(d["findings"])),
            ("Per layer", table),
            ("Image statistics", stats),
        ],
        images=pngs,
    )


# ---------------------------------------------------------------------------------------------
# rank
# ---------------------------------------------------------------------------------------------

SCORE_COLUMNS = ("logme", "leep", "nce", "hscore", "knn_accuracy")


@dataclass
class RankResult:
    """Transferability scores per backbone x layer, with ranks, gaps to the best and (when
    verified) the measured probe accuracy and each score's Kendall tau against it."""

    rows: list[dict[str, Any]]
    tau: dict[str, float]
    n_images: int
    seconds: float
    out: Path | None = None
    report: Path | None = None
    #: backbone -> how many stages it has (for the fine-tuning advice)
    n_stages: dict[str, int] = field(default_factory=dict)
    data: str = "DATA"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kendall_tau": self.tau,
            "n_images": self.n_images,
            "seconds": round(self.seconds, 1),
            "next_steps": self.next_steps(),
        }

    def best(self, score: str = "logme") -> dict[str, Any]:
        return max(self.rows, key=lambda r: r[score])

    def pick(self) -> dict[str, Any]:
        """The row to act on: the measured best probe when verified, else LogME's pick."""
        if self.tau and all("probe_accuracy" in r for r in self.rows):
            return max(self.rows, key=lambda r: r["probe_accuracy"])
        return self.best("logme")

    def next_steps(self) -> list[str]:
        """Commands that act on the pick: a probe on its backbone and layer, and a fine-tune
        that keeps the stages up to that layer frozen and trains the ones after it (the rule
        `diagnose` gives for data far from ImageNet; see benchmarks/RESULTS.md issue 4)."""
        from transferlab.diagnose._advice import stage_after

        row = self.pick()
        name, layer = row["backbone"], row["layer"]
        bb = f" --backbone {name}"
        at = "" if layer == "pre_logits" else f" --layer {layer}"
        steps = [f"transferlab fit {self.data}{bb}{at}"]
        n = self.n_stages.get(name, 0)
        freeze_to = stage_after(layer, n) if n else None
        if freeze_to is not None:
            steps.append(
                f"transferlab finetune {self.data}{bb} --freeze-to {freeze_to} --bn freeze "
                "--lr 1e-3 --lr-mult 10"
            )
        elif layer in ("pre_logits", "logits"):
            steps.append(f"transferlab finetune {self.data}{bb}")
        return steps


def rank_run(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    layers: Sequence[str] | None = None,
    verify: bool = False,
    max_images: int | None = 2000,
    cv: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
    cache_dir: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> RankResult:
    """Score every backbone x layer on `data` without training (LogME, LEEP, NCE, H-score, kNN).

    LEEP and NCE need a source model's class probabilities: on ``logits`` they are ImageNet's
    softmax (the original LEEP); on feature layers a Gaussian mixture's soft clusters stand in for
    them (N-LEEP, Li et al. 2021). With `verify`, each row also gets the cross-validated linear
    probe accuracy and each score its Kendall tau against it.
    """
    from transferlab.diagnose import (
        hscore,
        kendall_tau,
        knn_accuracy,
        leep,
        logme,
        nce,
        pseudo_source_probs,
        softmax,
    )
    from transferlab.diagnose._layers import cv_probe_accuracy

    step = on_step or (lambda s: logger.info(s))
    t0 = time.perf_counter()
    if not backbones:
        raise InvalidParameterError("rank needs at least one backbone")
    ds, samples = _labelled(data, val_fraction, seed, max_images)
    outp = Path(out) if out is not None else None
    if outp is not None:
        _prepare_out(outp, overwrite)
    cache: Any = cache_dir or True
    rows: list[dict[str, Any]] = []
    n_used = 0
    n_stages: dict[str, int] = {}
    for name in backbones:
        bb = load_backbone(name, device=device)
        n_stages[name] = sum(1 for t in bb.layers if t.startswith("stage"))
        wanted = list(layers) if layers else _default_layers(bb)
        for la in wanted:
            bb.check_layer(la)
        step(f"{name}: features of {len(samples)} images")
        fx = FeatureExtractor(bb, batch_size=batch_size, cache=cache, progress=progress)
        feats, index, _ = _features(
            fx, [s.path for s in samples], [*wanted, "logits"] if "logits" not in wanted else wanted
        )
        y = np.asarray([samples[i].label for i in index])
        n_used = len(y)
        source = softmax(feats["logits"])
        step(f"{name}: scores for {len(wanted)} layers")
        for la in wanted:
            X = feats[la]
            probs = source if la == "logits" else pseudo_source_probs(X, seed=seed)
            row = {
                "backbone": name,
                "layer": la,
                "dim": int(X.shape[1]),
                "logme": logme(X, y),
                "leep": leep(probs, y),
                "nce": nce(probs.argmax(1), y),
                "hscore": hscore(X, y),
                "knn_accuracy": knn_accuracy(X, y, cv=cv, seed=seed),
            }
            if verify:
                row["probe_accuracy"], row["probe_std"] = cv_probe_accuracy(X, y, cv=cv, seed=seed)
            rows.append(row)
    for score in SCORE_COLUMNS:
        vals = np.asarray([r[score] for r in rows])
        order = (-vals).argsort(kind="stable")
        best = vals.max()
        for rank, i in enumerate(order, start=1):
            rows[i][f"{score}_rank"] = rank
            rows[i][f"{score}_gap"] = float(vals[i] - best)
    tau: dict[str, float] = {}
    if verify:
        acc = [r["probe_accuracy"] for r in rows]
        tau = {s: kendall_tau([r[s] for r in rows], acc) for s in SCORE_COLUMNS}
    result = RankResult(
        rows=rows,
        tau=tau,
        n_images=n_used,
        seconds=time.perf_counter() - t0,
        out=outp,
        n_stages=n_stages,
        data=str(data),
    )
    if outp is not None:
        (outp / "rank.json").write_text(
            json.dumps({"dataset": ds.root, **result.to_dict()}, indent=2, default=_json_default)
        )
        result.report = _write_rank_report(outp, ds.root, result)
    return result


def rank_table(result: RankResult) -> tuple[list[str], list[list[Any]]]:
    """Header and rows for display: sorted by LogME, each score as value (rank)."""
    header = ["backbone", "layer", "dim", *[f"{s}" for s in SCORE_COLUMNS]]
    if result.tau:
        header.append("probe acc")
    rows = []
    for r in sorted(result.rows, key=lambda r: r["logme_rank"]):
        cells = [r["backbone"], r["layer"], r["dim"]]
        cells += [f"{r[s]:.3f} (#{r[f'{s}_rank']})" for s in SCORE_COLUMNS]
        if result.tau:
            cells.append(f"{r['probe_accuracy']:.3f}")
        rows.append(cells)
    return header, rows


def _write_rank_report(out: Path, dataset: str, result: RankResult) -> Path:
    from transferlab._internal.plotting import pyplot as _pyplot
    from transferlab.report import html_table, write_html_report

    header, rows = rank_table(result)
    gaps = [
        [r["backbone"], r["layer"], *[round(r[f"{s}_gap"], 4) for s in SCORE_COLUMNS]]
        for r in sorted(result.rows, key=lambda r: r["logme_rank"])
    ]
    sections = [
        ("Scores per backbone × layer (value, rank; higher is better)", html_table(header, rows)),
        (
            "Relative to the best row of each score (0 = best; same units as the score)",
            html_table(["backbone", "layer", *SCORE_COLUMNS], gaps),
        ),
    ]
    images = []
    best = result.best("logme")
    summary = {
        "LogME's pick": f"{best['backbone']} / {best['layer']}",
        "images": result.n_images,
        "next": "; ".join(result.next_steps()),
    }
    if result.tau:
        summary["Kendall tau of LogME vs probe accuracy"] = round(result.tau["logme"], 3)
        measured = max(result.rows, key=lambda r: r["probe_accuracy"])
        summary["measured best"] = (
            f"{measured['backbone']} / {measured['layer']} ({measured['probe_accuracy']:.3f})"
        )
        sections.append(
            (
                "How well each score predicts the probe's accuracy (Kendall tau; 1 = same order)",
                html_table(["score", "tau"], [[s, round(v, 3)] for s, v in result.tau.items()]),
            )
        )
        plt = _pyplot()
        fig, axes = plt.subplots(
            1, len(SCORE_COLUMNS), figsize=(4 * len(SCORE_COLUMNS), 3.6), constrained_layout=True
        )
        for ax, s in zip(axes, SCORE_COLUMNS, strict=True):
            for bbn in dict.fromkeys(r["backbone"] for r in result.rows):
                pts = [(r[s], r["probe_accuracy"]) for r in result.rows if r["backbone"] == bbn]
                ax.scatter(*zip(*pts, strict=True), label=bbn, s=18)
            ax.set_xlabel(s)
            ax.set_title(f"tau = {result.tau[s]:.2f}")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("probe accuracy")
        axes[0].legend(fontsize=7)
        fig.savefig(out / "scores_vs_accuracy.png", dpi=90)
        plt.close(fig)
        images.append(("Scores against measured probe accuracy", out / "scores_vs_accuracy.png"))
    from transferlab.diagnose import SCORES

    notes = dict(SCORES)
    notes["leep"] = (
        notes["leep"] + " On feature layers this column is N-LEEP (" + notes.pop("nleep") + ")."
    )
    sections.append(
        (
            "What the scores mean",
            html_table(["score", "meaning"], [[k, v] for k, v in notes.items()]),
        )
    )
    return write_html_report(
        out / "report.html",
        title=f"transferlab rank — {Path(dataset).name}",
        summary=summary,
        sections=sections,
        images=images,
    )


# ---------------------------------------------------------------------------------------------
# adapt-bn
# ---------------------------------------------------------------------------------------------


def adapt_bn_run(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: str = "efficientnet_lite0",
    weights: str = "default",
    max_images: int | None = 2000,
    batch_size: int = 32,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Re-estimate the backbone's BatchNorm statistics on the images under `data` (labels are
    not needed) and write ``weights.safetensors`` (use with ``--weights``) and ``adapt_bn.json``
    with the BN shift per depth before and after."""
    from transferlab.diagnose import adapt_bn, bn_shift, image_batches, save_backbone_weights

    t0 = time.perf_counter()
    root = Path(data)
    if not root.exists():
        raise DatasetNotFoundError(f"{root}: no such file or folder")
    paths = [root.as_posix()] if root.is_file() else list_images(root)[0]
    if len(paths) < 2:
        raise DatasetError(f"{root}: AdaBN needs at least 2 images, found {len(paths)}")
    if max_images is not None and len(paths) > max_images:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), max_images, replace=False))]
    outp = Path(out)
    _prepare_out(outp, overwrite)
    bb = load_backbone(backbone, weights=weights, device=device)
    from transferlab._internal.progress import progress as _progress

    # measure the shift on images AdaBN did not see, when there are enough
    held_out = len(paths) >= 512
    probe_paths = paths[-256:] if held_out else paths[:256]
    adapt_paths = paths[:-256] if held_out else paths
    with _progress(len(adapt_paths), f"AdaBN {bb.name}", progress) as bar:
        adapted = adapt_bn(
            bb, image_batches(bb, adapt_paths, batch_size=batch_size), progress=bar.update
        )
    before = bn_shift(bb, image_batches(bb, probe_paths, batch_size=batch_size)).by_tap()
    after = bn_shift(adapted, image_batches(adapted, probe_paths, batch_size=batch_size)).by_tap()
    wfile = save_backbone_weights(adapted, outp / "weights.safetensors")
    metrics = {
        "data": str(root),
        "backbone": bb.name,
        "n_images": len(adapt_paths),
        "weights": wfile,
        "weights_sha256": adapted.weights_sha256,
        "bn_shift_before": {k: round(v, 4) for k, v in before.items()},
        "bn_shift_after": {k: round(v, 4) for k, v in after.items()},
        "bn_shift_measured_on": "held-out images" if held_out else "the adapted images",
        "use": f"transferlab fit DATA --backbone {bb.name} --weights {wfile}",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (outp / "adapt_bn.json").write_text(json.dumps(metrics, indent=2))
    return FitResult(metrics=metrics, out=outp, model_dir=outp, report=None, confusion_png=None)  # type: ignore[arg-type]
