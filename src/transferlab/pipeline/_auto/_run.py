"""`run_auto`: the transfer decision made for the user, within a time budget, every choice on
the training images alone (an inner split and cross-validation); ``val/`` and ``test/`` are
scored once, at the end, with the model kept."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.rundir import prepare_out
from transferlab.data import Dataset, Sample, stratified_split
from transferlab.exceptions import DatasetError, InvalidParameterError
from transferlab.pipeline._auto._config import AutoConfig, AutoMetrics, Candidate
from transferlab.pipeline._auto._final import (
    auto_domain,
    final_finetune,
    final_probe,
    weights_sha,
)
from transferlab.pipeline._auto._probe import (
    FEW_SHOT,
    BackboneFeatures,
    check_data,
    cv_score,
    inner_score,
    labels_of,
    rank_and_probe,
    score,
)
from transferlab.pipeline._domain import drawn_val_advice
from transferlab.pipeline._finetune import tie_margin
from transferlab.pipeline._results import RunResult
from transferlab.pipeline._shared import eval_block, leakage_note, resolve_dataset

__all__ = ["run_auto"]

logger = logging.getLogger(__name__)

#: share of the time left that ranking backbones may use (the probes' features)
RANK_SHARE = 0.35
#: seconds kept back for the final scoring, plots and report
RESERVE_S = 30.0
#: the least time a fine-tune can use (measuring its step alone takes seconds): with less left
#: after the probes, the shift and the fine-tunes are not tried
MIN_FINETUNE_S = 60.0
#: reference images for the BatchNorm shift (each side)
BN_IMAGES = 128


def run_auto(config: AutoConfig) -> RunResult:
    """Check the data, rank backbones x layers, measure the domain shift, try the fine-tune
    recipes it calls for that fit the budget, keep the best model on the inner validation
    images, and save it with one report (decision log, then evaluation on ``val/``).

    Raises:
        InvalidParameterError: multi-label data (use `fit`/`finetune` with multi_label).
        DatasetError: a class with fewer than 2 training images (nothing to hold out).
    """
    t0 = time.perf_counter()
    deadline = time.monotonic() + config.budget_s
    step = _stepper(config, t0)
    ds = resolve_dataset(config.data, val_fraction=config.val_fraction, seed=config.seed)
    if ds.multi_label:
        raise InvalidParameterError(
            "auto handles single-label data; for multi-label use fit or finetune --multi-label"
        )
    out = Path(config.out)
    prepare_out(out, config.overwrite)
    stages: dict[str, float] = {}

    def stage_done(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - since, 2)
        return now

    step("checking the data")
    t = time.perf_counter()
    data_check = check_data(ds)
    counts = data_check["class_counts"]
    if len(counts) < 2 or min(counts.values()) < 2:
        raise DatasetError(
            f"{ds.root}: auto needs at least 2 training images in each of 2 classes; got {counts}"
        )
    inner_train, inner_val = stratified_split(ds.train, config.inner_val_fraction, config.seed)
    inner_train_paths = {s.path for s in inner_train}
    domain, target = auto_domain(config, ds)
    if domain is not None:
        step(f"target domain: remedy {domain.remedy} ({domain.chosen_by})")
    # a remedy is applied to probes; a fine-tune's gain is measured on training-domain images
    finetune = config.finetune and (domain is None or domain.remedy == "none")
    t = stage_done("data_check", t)

    ranked, candidates = rank_and_probe(
        config, list(ds.train), inner_train_paths, deadline, RANK_SHARE, step
    )
    t = stage_done("rank_and_probe", t)
    probes = [c for c in candidates if c.status == "kept"]
    best_probe = max(probes, key=lambda c: (c.cv_score or 0.0, c.inner_score or 0.0))
    by_name = {bf.name: bf for bf in ranked}

    if finetune and deadline - time.monotonic() - _reserve(ds) >= MIN_FINETUNE_S:
        bn = by_name[best_probe.backbone].extractor.backbone_.family.batchnorm
        measure = "BatchNorm statistics" if bn else "activation statistics of the norm layers"
        step(f"domain shift: {measure} against natural photos")
        shift_info, recipes = _shift_and_recipes(config, by_name[best_probe.backbone], data_check)
    else:  # no fine-tune can fit: the shift would choose a recipe that cannot run
        left = max(0.0, deadline - time.monotonic())
        shift_info = {
            "kind": "not measured",
            "skipped": f"{left:.0f} s left in the budget: no fine-tune fits, so the shift that "
            "picks its recipe was not measured"
            if finetune
            else _no_finetune(config, domain),
            "recipes": [],
        }
        recipes = []
        if config.finetune:
            candidates.append(
                Candidate(
                    "finetune (no recipe chosen)",
                    "finetune",
                    best_probe.backbone,
                    why=f"not started: {shift_info['skipped']}",
                )
            )
    t = stage_done("domain_shift", t)

    tuned = None
    smallest = min(counts.values())
    if not finetune:
        why_none = _no_finetune(config, domain)
    elif smallest < FEW_SHOT:
        why_none = f"the smallest class has {smallest} training images (< {FEW_SHOT})"
    else:
        why_none = ""
        tuned = _finetunes(
            config,
            ds,
            inner_train,
            inner_val,
            recipes,
            ranked,
            best_probe,
            candidates,
            deadline,
            step,
        )
        candidates += tuned[1]
        t = stage_done("finetune", t)
    if why_none:
        for r in recipes:
            candidates.append(
                Candidate(
                    f"finetune {r.name}",
                    "finetune",
                    best_probe.backbone,
                    recipe=r.name,
                    settings=r.settings,
                    why=f"not started: {why_none}",
                )
            )

    # the decision: probes by their cross-validated score; a fine-tune by that of its
    # backbone's probe plus its gain over the better of its own start and that probe on the
    # inner images, which must exceed a tie (one inner validation image or half a point) over
    # the best probe
    margin = tie_margin(len(inner_val))
    winner: Candidate = best_probe
    tuner = None
    if tuned is not None and tuned[0] is not None:
        ft_row, ft_tuner = tuned[0]
        if (ft_row.expected_score or 0.0) > (best_probe.cv_score or 0.0) + margin:
            winner, tuner = ft_row, ft_tuner
    for c in candidates:
        if c is winner:
            c.status = "chosen"
    _explain(winner, best_probe, candidates, margin)

    step(f"scoring the chosen model ({winner.name}) once on the held-out splits")
    if tuner is None:
        model, reports, calibration, views_in = final_probe(
            config, ds, by_name[winner.backbone], str(winner.layer), domain, target
        )
    else:
        model, reports, calibration, views_in = final_finetune(ds, tuner, inner_val)
    t = stage_done("final", t)
    val, test = reports["val"], reports.get("test")
    metrics = AutoMetrics(
        **AutoMetrics.scores(
            val, n_train=len(ds.train), test=test, skipped=[], classes=model.classes
        ),
        backbone=winner.backbone,
        weights_sha256=weights_sha(model),
        layer=str(winner.layer) if winner.kind == "probe" else "finetuned",
        chosen={
            "name": winner.name,
            "kind": winner.kind,
            "inner_score": winner.inner_score,
            "cv_score": winner.cv_score,
            "expected_score": winner.expected_score,
            "rule": f"probes by {config.cv}-fold cross-validated {config.metric} on the training "
            "images; a fine-tune by its backbone's pre_logits probe score plus its gain over the "
            "better of its own start and that probe, both scored on the "
            f"{len(inner_val)} inner validation images; it must beat the best probe by more "
            f"than {margin:.3f} (ties go to the probe)",
        },
        metric=config.metric,
        data_check=data_check,
        shift=shift_info,
        candidates=[c.to_dict() for c in candidates],
        images_used=_images_used(ds, inner_train, inner_val, config),
        budget={"budget_s": config.budget_s, "stages": stages},
        dataset={"path": ds.root, "source": ds.source, "split": ds.split_note},
        calibration=calibration,
        test=eval_block(test) if test is not None else None,
        domain=domain.to_dict() if domain is not None else None,
        remedy_advice=drawn_val_advice(
            ds,
            f"transferlab auto {ds.root} --remedy style",
            target=config.target,
            remedy=config.remedy,
        ),
        leakage=leakage_note(
            ds, extractor=config.extractor(config.backbones[0], layer="pre_logits")
        ),
    )
    model.metrics = metrics.to_dict()
    model_dir = model.save(out / "model", overwrite=True)
    from transferlab.pipeline._views import training_views
    from transferlab.report import write_auto_report

    images = training_views(out, **views_in, split="validation")
    metrics.seconds = round(time.perf_counter() - t0, 2)
    metrics.budget["seconds"] = metrics.seconds
    metrics.budget["within_budget"] = metrics.seconds <= config.budget_s * 1.1
    model.metrics = metrics.to_dict()
    report = write_auto_report(out, ds, metrics, images)
    step(f"done in {metrics.seconds:.0f} s: {winner.name}, validation accuracy {val.accuracy:.4f}")
    return RunResult.written(
        metrics,
        out,
        model_dir=model_dir,
        report=report,
        confusion_png=images[0][1] if images else None,
    )


def _stepper(config: AutoConfig, t0: float) -> Any:
    """The progress line per stage: elapsed time and budget left, to `on_step` or the log."""

    def step(text: str) -> None:
        spent = time.perf_counter() - t0
        line = f"[{spent:5.0f} s / {config.budget_s:.0f} s] {text}"
        (config.on_step or logger.info)(line)

    return step


def _shift_and_recipes(
    config: AutoConfig, bf: BackboneFeatures, data_check: dict[str, Any]
) -> tuple[dict[str, Any], list[Any]]:
    """BatchNorm shift of the training images against the built-in natural photos (for
    networks without BatchNorm, the shift of every norm layer's input statistics), located by
    depth, and the recipes it calls for (`diagnose.recipes_for`), in the family's flags."""
    from transferlab.diagnose import (
        ACT_SHIFT_RATIO,
        SHIFT_RATIO,
        activation_shift,
        bn_shift,
        default_reference,
        image_batches,
        layer_probe,
        locate_shift,
        recipes_for,
        significant_peak,
    )

    bb = bf.extractor.backbone_
    rng = np.random.default_rng(config.seed)
    paths = [s.path for s in bf.samples]
    pick = sorted(rng.choice(len(paths), min(BN_IMAGES, len(paths)), replace=False))
    ref = default_reference()
    ref = ref[:: max(1, len(ref) // BN_IMAGES)][:BN_IMAGES]
    info: dict[str, Any] = {"backbone": bf.name, "measured_on": f"{len(pick)} training images"}
    target = image_batches(bb, [paths[i] for i in pick], batch_size=32)
    try:
        if bb.family.batchnorm:
            t = bn_shift(bb, target)
            r = bn_shift(bb, image_batches(bb, ref, batch_size=32))
        else:
            info["measure"] = "activation statistics of every norm layer (no BatchNorm)"
            t, r = activation_shift(bb, target, list(image_batches(bb, ref, batch_size=32)))
        ratio = SHIFT_RATIO if bb.family.batchnorm else ACT_SHIFT_RATIO
        shift, n_stages = locate_shift(t.by_tap(), r.by_tap(), ratio)
    except InvalidParameterError as e:  # no norm layer at all: the measure does not apply
        shift, n_stages = None, sum(1 for la in bf.features if la.startswith("stage"))
        info["skipped"] = str(e)
    peak = None
    if shift is not None and shift.low:
        y = [str(s.label) for s in bf.samples]
        layers = {la: X for la, X in bf.features.items() if la != "logits"}
        peak = significant_peak(layer_probe(layers, y, cv=config.cv, seed=config.seed).to_dict())
    stats = data_check["image_stats"]
    recipes = recipes_for(
        shift,
        n_stages=n_stages,
        peak=peak,
        min_side=float(stats.get("median_min_side", bf.input_size)),
        input_size=bf.input_size,
        family=bb.family.name,
    )
    info.update(
        kind="none" if shift is None else "low_level" if shift.low else "high_level",
        first_shifted_tap=shift.first_tap if shift else None,
        probe_peak_layer=peak,
        recipes=[r.name for r in recipes],
    )
    return info, recipes


def _finetunes(
    config: AutoConfig,
    ds: Dataset,
    inner_train: list[Sample],
    inner_val: list[Sample],
    recipes: list[Any],
    ranked: list[BackboneFeatures],
    best_probe: Candidate,
    candidates: list[Candidate],
    deadline: float,
    step: Any,
) -> tuple[tuple[Candidate, Any] | None, list[Candidate]]:
    """Each recipe on the best probe's backbone, or the next cheaper one, when its estimate
    (measured step time x the data) fits the time left; trained on the inner training images,
    its epoch and WiSE blend chosen on the inner validation images. The best (row, tuner)."""
    from transferlab.diagnose import larger_size
    from transferlab.finetune import Deadline, FinetuneConfig, FineTuner, measure_step_cost

    rows: list[Candidate] = []
    best: tuple[Candidate, Any] | None = None
    sizes = {b.name: b.input_size for b in ranked}
    by_name = {b.name: b for b in ranked}
    for recipe in recipes:
        row = None
        for name in _cheaper_first_fallback(best_probe.backbone, ranked):
            settings = dict(recipe.settings)
            if recipe.family == "near_imagenet" and "image_size" in settings:
                settings["image_size"] = larger_size(sizes[name])  # of this backbone's input
            cfg = FinetuneConfig(
                backbone=name,
                weights=config.weights,
                seed=config.seed,
                device=config.device,
                max_pixels=config.max_pixels,
                num_workers=config.num_workers,
                **settings,
            )
            row = Candidate(
                f"finetune {recipe.name} ({name})",
                "finetune",
                name,
                recipe=recipe.name,
                settings=settings,
            )
            left = deadline - time.monotonic() - _reserve(ds)
            if left <= 0:
                row.why = "not started: no time left in the budget"
                break
            step(f"measuring a training step of {row.name}")
            cost = measure_step_cost(cfg, list(ds.classes))
            row.estimated_s = round(cost.estimate_seconds(cfg, len(inner_train), len(inner_val)))
            left = deadline - time.monotonic() - _reserve(ds)
            if row.estimated_s > left:
                row.why = (
                    f"not started: estimated {row.estimated_s:.0f} s "
                    f"({cost.train_step_s:.2f} s per step of {cost.batch_size} at "
                    f"{cost.image_size} px) > {left:.0f} s left"
                )
                rows.append(row)
                row = None
                continue
            step(f"{row.name}: about {row.estimated_s:.0f} s of {left:.0f} s left")
            t = time.perf_counter()
            tuner = FineTuner(
                cfg, callbacks=[Deadline(deadline - _reserve(ds))], progress=config.progress
            )
            result = tuner.fit(inner_train, inner_val, ds.classes, on_error="skip")
            proba, y = tuner.predict_proba_loader(tuner.loaders_["val"])
            classes = np.asarray(tuner.classes_, dtype=object)
            row.inner_score = round(score(config.metric, classes[y], classes[proba.argmax(1)]), 4)
            row.seconds = round(time.perf_counter() - t, 1)
            row.status = "kept"
            own_start = float(result.probe_val_score or 0.0)
            base, base_inner = _base_scores(config, by_name[name], inner_train, candidates)
            # the gain is over the better of its own start and the plain probe of the same
            # backbone, both on these inner images: a start weakened by a different input size
            # must not inflate it (trashnet: a 0.726 start at 288 px against a 0.80 probe)
            start = max(own_start, base_inner)
            row.start_score = round(start, 4)
            row.expected_score = expected_score(base, base_inner, own_start, row.inner_score)
            stopped = " (stopped early by the budget)" if result.stopped_early else ""
            row.why = (
                f"{len(result.history)} epochs{stopped}, best epoch {result.best_epoch}, WiSE "
                f"alpha {result.wise_alpha:g}: {row.inner_score:.3f} on the inner validation "
                f"images against {start:.3f}, the better of its own probe start "
                f"({own_start:.3f}) and {name}/pre_logits probed on the same images "
                f"({base_inner:.3f}); expected {row.expected_score:.3f} = that probe's "
                f"cross-validated {base:.3f} {row.inner_score - start:+.3f}; {recipe.why}"
            )
            if best is None or row.expected_score > (best[0].expected_score or 0.0):
                best = (row, tuner)
            break
        if row is not None:
            rows.append(row)
    return best, rows


def expected_score(base_cv: float, base_inner: float, own_start: float, tuned: float) -> float:
    """A fine-tune's score on the scale of the probes' cross-validated ones: its backbone's
    pre_logits probe CV score plus what the fine-tune gained on the inner validation images
    over the better of its own start (the probe-initialised network, perhaps at another input
    size) and that same probe there. Both terms of the gain are scored on the same images, so
    the split's noise cancels; a start weakened by a new input size cannot inflate it. Capped
    at 1, the scale of the scores it is compared with."""
    return round(min(1.0, base_cv + tuned - max(own_start, base_inner)), 4)


def _base_scores(
    config: AutoConfig, bf: BackboneFeatures, inner_train: list[Sample], candidates: list[Candidate]
) -> tuple[float, float]:
    """`bf`'s pre_logits probe on the training images: its cross-validated score and its score
    on the inner validation images (from the probes already run, else measured now)."""
    for c in candidates:
        if c.backbone == bf.name and c.layer == "pre_logits" and c.cv_score is not None:
            return c.cv_score, float(c.inner_score or 0.0)
    X, y = bf.features["pre_logits"], labels_of(bf.samples)
    inner = inner_score(config, X, y, bf.samples, {s.path for s in inner_train})
    return cv_score(config, X, y), inner


def _cheaper_first_fallback(first: str, ranked: list[BackboneFeatures]) -> list[str]:
    """The best probe's backbone, then the others from the cheapest (smallest input) up."""
    sizes = {b.name: b.input_size for b in ranked}
    rest = sorted((n for n in sizes if n != first), key=lambda n: sizes[n])
    return [first, *rest]


def _reserve(ds: Dataset) -> float:
    """Seconds kept for scoring val/test, the plots and the report."""
    return RESERVE_S + 0.05 * (len(ds.val) + len(ds.test))


def _explain(
    winner: Candidate, best_probe: Candidate, rows: list[Candidate], margin: float
) -> None:
    """Each run candidate's status line says how it compared with the winner."""
    for c in rows:
        if c is winner:
            c.why = f"chosen: {c.why}"
        elif c.status == "kept" and c.kind == "finetune":
            c.why = (
                f"not kept: expected {c.expected_score:.3f} does not beat the best probe "
                f"({best_probe.cv_score:.3f}) by more than {margin:.3f}; {c.why}"
                if winner is best_probe
                else f"not kept: below {winner.name} ({winner.expected_score:.3f}); {c.why}"
            )
        elif c.status == "kept" and c.kind == "probe" and c is not best_probe:
            c.why = f"not kept: a lower cross-validated score than {best_probe.name}; {c.why}"
        elif c is best_probe:
            c.why = f"best probe, not kept: {winner.name} scored higher; {c.why}"


def _no_finetune(config: AutoConfig, domain: Any) -> str:
    if not config.finetune:
        return "fine-tuning turned off (finetune=False)"
    return (
        f"the {domain.remedy} remedy for the target domain is applied to the probe; a "
        "fine-tune's gain is measured on training-domain images (finetune --remedy style)"
    )


def _images_used(
    ds: Dataset, inner_train: list[Sample], inner_val: list[Sample], config: AutoConfig
) -> dict[str, str]:
    """Which images each figure came from, as the report states it."""
    return {
        "ranking_and_probes": f"the {len(ds.train)} training images: LogME, and "
        f"{config.cv}-fold cross-validated probes",
        "comparison": f"{len(inner_val)} inner validation images held out of the training "
        f"images ({config.inner_val_fraction:.0%}, stratified, seed {config.seed}); fine-tunes "
        f"trained on the other {len(inner_train)}, their epoch and WiSE blend chosen on these",
        "final_probe": "a chosen probe is refitted on every training image; its temperature "
        "fitted on their out-of-fold probabilities",
        "final_finetune": "a chosen fine-tune is the one trained on the inner training images; "
        "its temperature fitted on the inner validation images",
        "reported": f"validation figures: the {len(ds.val)} images of the validation split "
        f"({ds.split_note}), scored once with the chosen model and never used for a choice"
        + (f"; test figures: the {len(ds.test)} test images, likewise" if ds.test else ""),
    }
