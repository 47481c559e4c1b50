"""`run_diagnose`: will transfer work on this data, with which layer, how much to retrain,
and why it fails when it does (layer probes, scores, domain gap, BN shift, AdaBN, advice)."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.choices import FEATURE_PRECISIONS
from transferlab._internal.deprecation import warn_once
from transferlab._internal.rundir import prepare_out
from transferlab.data import DEFAULT_MAX_PIXELS, list_images
from transferlab.exceptions import DatasetError, DatasetNotFoundError
from transferlab.pipeline._results import Metrics, RunResult
from transferlab.pipeline._shared import (
    ExtractorSettings,
    check_choice,
    check_min,
    default_layers,
    features_of,
    labelled_sample,
)

__all__ = ["DiagnoseConfig", "DiagnoseMetrics", "diagnose_run", "run_diagnose"]

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class DiagnoseConfig(ExtractorSettings):
    """Settings of `diagnose_run`; CLI flags map one-to-one onto these fields.

    Attributes:
        data: labelled dataset (see `load_dataset`); train and validation images are both used.
        out: folder for diagnosis.json, plots and report.html.
        backbone, weights: the network to diagnose.
        reference: folder of reference images (None: the built-in natural photos).
        target: a folder of the unlabelled images the model will be asked about, measured
            against the training images (another domain?); the data's own val/test split is
            measured so whenever the data comes with one.
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
    target: str | None = None
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
    precision: str = "auto"

    transform: Callable[[Any], Any] | None = field(default=None, compare=False)
    on_step: Callable[[str], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_choice("adabn", self.adabn, ("auto", "on", "off"), wording="auto, on or off")
        check_choice("precision", self.precision, FEATURE_PRECISIONS)
        check_min("max_images", self.max_images, 8)
        check_min("bn_images", self.bn_images, 8)
        check_min("cv", self.cv, 2)


@dataclass(kw_only=True)
class DiagnoseMetrics(Metrics):
    """diagnosis.json: the findings with advice and the evidence behind them."""

    FILE = "diagnosis.json"

    dataset: str
    backbone: str
    weights_sha256: str | None
    n_images: int
    n_failed: int
    class_counts: dict[str, int]
    reference: dict[str, Any]
    findings: list[dict[str, Any]]
    layer_probe: dict[str, Any]
    scores: dict[str, dict[str, float]]
    domain_gap: dict[str, Any]
    bn_shift: dict[str, Any]
    image_stats: dict[str, Any]
    preprocessing: list[dict[str, Any]]
    adabn: dict[str, Any] | None
    backbones: dict[str, dict[str, float]] | None
    seconds: dict[str, float]
    #: the backbone's family (`transferlab.backbones.FAMILIES`)
    family: str = "batchnorm-cnn"
    #: measures that do not apply to this backbone, each with why and what stands in
    skipped: list[str] = field(default_factory=list)
    #: the training images against the data's val split, or `target` (`diagnose.split_shift`)
    split_shift: dict[str, Any] | None = None


def run_diagnose(config: DiagnoseConfig) -> RunResult:
    """Diagnose transfer on `config.data`: layer-wise probing, per-layer scores, domain gap to the
    reference, BatchNorm shift, preprocessing checks and AdaBN; findings with advice.

    Args:
        config: the settings; among them
        transform: the user's own preprocessing (PIL image -> tensor), checked against the
            backbone's; None checks only the images.
        on_step: called with a short description as each step starts (for progress display).
        (both are fields of `config`.)

    Writes ``diagnosis.json``, ``layer_probe.png``, ``domain_gap.png``, ``bn_shift.png`` and
    ``report.html`` to `config.out`.
    """
    from transferlab.diagnose import (
        activation_shift,
        adapt_bn,
        advise,
        bn_shift,
        check_preprocessing,
        cv_probe_accuracy,
        domain_gap,
        hscore,
        image_batches,
        image_statistics,
        knn_accuracy,
        layer_probe,
        logme,
    )

    step = config.on_step or (lambda s: logger.info(s))
    transform = config.transform
    t0 = time.perf_counter()
    cfg = config
    out = Path(cfg.out)
    ds, samples = labelled_sample(cfg.data, cfg.val_fraction, cfg.seed, cfg.max_images)
    ref_paths, ref_name = _reference_paths(cfg.reference)  # a bad --reference fails before work
    prepare_out(out, cfg.overwrite)
    # int8 calibrates on the images diagnosed (scores are cross-validated over them)
    cal = [s.path for s in samples] if cfg.precision == "int8" else None
    fx = cfg.extractor(calibration=cal).fit()
    bb = fx.backbone_
    layers = list(cfg.layers) if cfg.layers else default_layers(bb)
    for la in layers:
        bb.check_layer(la)
    timings: dict[str, float] = {}

    step(f"features of {len(samples)} images from {len(layers)} layers")
    t = time.perf_counter()
    feats, index, failures = features_of(fx, [s.path for s in samples], layers)
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

    step("train against val/target: another domain?")
    t = time.perf_counter()
    split, split_paths = _split_shift(cfg, ds, fx, kept, feats, y, layers)
    timings["split_shift"] = time.perf_counter() - t

    step("reference images and domain gap")
    t = time.perf_counter()
    ref_feats, _, _ = features_of(fx, ref_paths, layers)
    gap = domain_gap(feats, ref_feats, seed=cfg.seed)
    target_stats = image_statistics([s.path for s in kept]).to_dict()
    ref_stats = image_statistics(ref_paths).to_dict()
    timings["domain_gap"] = time.perf_counter() - t

    rng = np.random.default_rng(cfg.seed)
    bn_idx = sorted(rng.choice(len(kept), min(cfg.bn_images, len(kept)), replace=False))
    bn_paths = [kept[i].path for i in bn_idx]
    ref_bn = ref_paths[:: max(1, len(ref_paths) // cfg.bn_images)][: cfg.bn_images]  # spread
    target_batches = image_batches(
        bb, bn_paths, batch_size=cfg.batch_size, max_pixels=cfg.max_pixels
    )
    skipped: list[str] = []
    family = bb.family
    t = time.perf_counter()
    if family.batchnorm:
        step("BatchNorm statistics")
        shift_t = bn_shift(bb, target_batches)
        shift_r = bn_shift(bb, image_batches(bb, ref_bn, batch_size=cfg.batch_size))
    else:
        skipped.append(
            f"BatchNorm shift and AdaBN: {bb.name} is a {family.name} ({family.examples}) with "
            "no BatchNorm statistics; measured instead: the shift of every norm layer's input "
            "statistics against the reference photos"
        )
        step("activation statistics of every norm layer (no BatchNorm in this network)")
        shift_t, shift_r = activation_shift(
            bb, target_batches, list(image_batches(bb, ref_bn, batch_size=cfg.batch_size))
        )
    if split is not None:
        step(f"train against {split.other}: colour and BatchNorm statistics per split")
        _describe_split(cfg, bb, split, *split_paths)
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
        "family": family.name,
        "split_shift": split.to_dict() if split is not None else None,
    }
    findings = advise(**evidence)
    adabn_result = None
    low_shift = any(f.code == "domain_shift_low_level" for f in findings)
    if not family.batchnorm:
        pass  # named in `skipped` above
    elif cfg.adabn == "on" or (cfg.adabn == "auto" and low_shift):
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
        fx_a = cfg.extractor(adapted, calibration=cal)
        last = "pre_logits" if "pre_logits" in layers else layers[-1]
        fa, ia, _ = features_of(fx_a, [s.path for s in sub], [last])
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
                # the compared backbones with their own pretrained weights
                fx_c = (
                    fx
                    if name == bb.name
                    else cfg.extractor(name, weights="default", calibration=cal)
                )
                fc, ic, _ = features_of(fx_c, paths, ["pre_logits"])
                X, yc = fc["pre_logits"], y[ic]
            backbones[name] = {
                "logme": logme(X, yc),
                "knn_accuracy": knn_accuracy(X, yc, cv=cfg.cv, seed=cfg.seed),
            }
        timings["compare"] = time.perf_counter() - t
    from transferlab.diagnose import SEVERITIES
    from transferlab.report import diagnosis_plots, write_diagnosis_report

    findings.append(_backbone_finding(bb.name, backbones, str(cfg.data)))
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: advise's order kept

    step("plots and report")
    pngs = diagnosis_plots(out, probe, gap, shift_t, shift_r, scores)
    diagnosis = DiagnoseMetrics(
        dataset=ds.root,
        backbone=bb.name,
        weights_sha256=bb.weights_sha256,
        n_images=len(kept),
        n_failed=len(failures),
        class_counts=dict(counts),
        reference={"source": ref_name, "n_images": len(ref_paths)},
        findings=[f.to_dict() for f in findings],
        layer_probe=probe.to_dict(),
        scores={la: {k: round(v, 4) for k, v in s.items()} for la, s in scores.items()},
        domain_gap=gap.to_dict(),
        bn_shift={"target": shift_t.to_dict(), "reference": shift_r.to_dict()},
        image_stats={"target": target_stats, "reference": ref_stats},
        preprocessing=preprocessing,
        adabn=adabn_result,
        backbones=backbones,
        skipped=skipped,
        family=family.name,
        split_shift=split.to_dict() if split is not None else None,
        seconds={
            **{k: round(v, 1) for k, v in timings.items()},
            "total": round(time.perf_counter() - t0, 1),
        },
    )
    return RunResult.written(diagnosis, out, report=write_diagnosis_report(out, diagnosis, pngs))


def _split_shift(
    cfg: DiagnoseConfig,
    ds: Any,
    fx: Any,
    kept: list[Any],
    feats: dict[str, np.ndarray],
    y: np.ndarray,
    layers: list[str],
) -> Any:
    """`split_shift` of the training images against `cfg.target`'s images (unlabelled), else
    against the data's own val split when it came with one, and the image paths of both sides;
    None when neither applies."""
    from transferlab.data import list_images
    from transferlab.diagnose import split_shift

    none: tuple[Any, tuple[list[str], list[str], str]] = (None, ([], [], ""))
    train_paths = {s.path for s in ds.train}
    tr = np.asarray([i for i, s in enumerate(kept) if s.path in train_paths], dtype=int)
    if len(tr) < 4:
        return none
    train = {la: feats[la][tr] for la in layers}
    tr_paths = [kept[i].path for i in tr]
    if cfg.target is not None:
        if not Path(cfg.target).is_dir():
            raise DatasetError(f"--target {cfg.target}: not a folder of images")
        paths, _ = list_images(cfg.target)
        if len(paths) < 4:
            raise DatasetError(
                f"--target {cfg.target}: needs at least 4 images, found {len(paths)}"
            )
        paths = [str(p) for p in paths][: cfg.max_images]
        other, _, _ = features_of(fx, paths, layers)
        shift = split_shift(
            train, y[tr], other, None, other_name="target", cv=cfg.cv, seed=cfg.seed
        )
        return shift, (tr_paths, paths, str(cfg.target))
    if not getattr(ds, "split_explicit", False):
        return none  # val drawn at random from the same images: one domain by construction
    va = np.asarray([i for i, s in enumerate(kept) if s.path not in train_paths], dtype=int)
    if len(va) < 4:
        return none
    other = {la: feats[la][va] for la in layers}
    va_paths = [kept[i].path for i in va]
    shift = split_shift(train, y[tr], other, y[va], other_name="val", cv=cfg.cv, seed=cfg.seed)
    return shift, (tr_paths, va_paths, os.path.commonpath(va_paths))


def _describe_split(
    cfg: DiagnoseConfig, bb: Any, split: Any, train: list[str], other: list[str], where: str
) -> None:
    """What kind of shift it is, for the advice: each side's colourfulness, each side's BatchNorm
    statistics against the network's (where it has BatchNorm), and the remedy measured best for
    that kind (`choose_remedy`), with its command."""
    from transferlab.data import colourfulness
    from transferlab.diagnose import bn_shift, choose_remedy, image_batches, remedy_command

    split.saturation = {"train": colourfulness(train), split.other: colourfulness(other)}
    if bb.family.batchnorm:
        n = cfg.bn_images
        split.bn_shift = {
            side: bn_shift(
                bb,
                image_batches(bb, paths[:: max(1, len(paths) // n)][:n], batch_size=cfg.batch_size),
            ).by_tap()
            for side, paths in (("train", train), (split.other, other))
        }
    choice = choose_remedy(
        split.saturation["train"], split.saturation[split.other], have_target=True
    )
    split.remedy = {
        "remedy": choice.remedy,
        "reason": choice.reason,
        "command": remedy_command(str(cfg.data), choice, where, bb.name),
    }


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


def diagnose_run(
    config: DiagnoseConfig,
    *,
    transform: Callable[[Any], Any] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> RunResult:
    """Deprecated: `run_diagnose(DiagnoseConfig(..., transform=..., on_step=...))`."""
    warn_once("transferlab.pipeline.diagnose_run", "transferlab.pipeline.run_diagnose")
    return run_diagnose(
        replace(
            config,
            transform=transform if transform is not None else config.transform,
            on_step=on_step if on_step is not None else config.on_step,
        )
    )


# kept where callers import them from (cli/diagnose.py, tests): the rank run's names
from transferlab.pipeline._rank import SCORE_COLUMNS as SCORE_COLUMNS  # noqa: E402
from transferlab.pipeline._rank import RankResult as RankResult  # noqa: E402
from transferlab.pipeline._rank import rank_table as rank_table  # noqa: E402
