"""Scoring the model `run_auto` chose, once, on ``val/`` (and ``test/``): the chosen probe
refitted on every training image (with the ``--target`` remedy, when one applies), or the
chosen fine-tune as trained on the inner images; each with its temperature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data import Dataset, Sample
from transferlab.exceptions import DatasetError
from transferlab.pipeline._auto._config import AutoConfig
from transferlab.pipeline._auto._probe import BackboneFeatures, labels_of
from transferlab.pipeline._domain import DomainNote, adapted_probe, load_target, resolve_remedy
from transferlab.pipeline._finetune import finetuned_embedding

__all__ = ["auto_domain", "final_finetune", "final_probe", "weights_sha"]


def auto_domain(config: AutoConfig, ds: Dataset) -> tuple[DomainNote | None, list[str] | None]:
    """The remedy `config` asks for (``auto`` with a target: the measured-best one) and the
    target images read; (None, None) when there is neither a target nor a remedy."""
    if config.target is None and config.remedy in ("none", "auto"):
        return None, None
    target = load_target(config.target, config.seed) if config.target is not None else None
    note = resolve_remedy(
        config.remedy,
        [s.path for s in ds.train],
        target,
        [s.path for s in ds.val],
        config.target,
        allowed=("none", "style", "coral", "self-train"),
    )
    return note, target


def final_probe(
    config: AutoConfig,
    ds: Dataset,
    bf: BackboneFeatures,
    layer: str,
    domain: DomainNote | None = None,
    target: list[str] | None = None,
) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The chosen probe refitted on every training image (with `domain`'s remedy); its
    temperature fitted on the training images' out-of-fold probabilities (of the plain
    probe); val (and test) scored once, and with a remedy the plain probe on val beside it."""
    from transferlab.evaluate import calibrate, evaluate_predictions
    from transferlab.models import MAX_TRAIN_INDEX, TransferModel
    from transferlab.probe import LinearProbe, oof_proba

    X, y = bf.features[layer], labels_of(bf.samples)
    fx = config.extractor(bf.name, weights=config.weights, layer=layer).fit()
    plain = LinearProbe().fit(X, y)
    probe = plain
    if domain is not None and domain.remedy != "none":
        from transferlab.features._cache import default_cache_dir

        folder = (Path(config.cache_dir) if config.cache_dir else default_cache_dir()) / "styles"
        if config.no_cache:
            folder = Path(config.out) / "styles"
        probe = adapted_probe(domain, fx, bf.samples, X, y, target, folder, LinearProbe)
    oof, cls = oof_proba(X, y, config.cv, config.seed)
    oof = oof[:, [list(cls).index(c) for c in probe.classes_]]  # columns in the probe's order
    index = {c: i for i, c in enumerate(probe.classes_)}
    reports, probas, views = {}, {}, {}
    for name, samples in (("val", ds.val), ("test", ds.test)):
        if not samples:
            continue
        res = fx.extract([s.path for s in samples], on_error="skip")
        kept = [samples[i] for i in res.index]
        p = probe.predict_proba(res.features[layer])
        labels = labels_of(kept)
        probas[name] = (p, np.array([index[v] for v in labels]))
        reports[name] = evaluate_predictions(list(labels), p, probe.classes_)
        if name == "val" and domain is not None:
            domain.plain_val_accuracy = float(plain.score(res.features[layer], labels))
        if name == "val":
            views = {
                "paths": [s.path for s in kept],
                "labels": list(labels),
                "raw_proba": p,
                "classes": [str(c) for c in probe.classes_],
                "features": res.features[layer],
                "layer": layer,
            }
    if "val" not in reports:
        raise DatasetError(f"{ds.root}: no validation image could be read")
    cal = calibrate(
        oof,
        np.array([index[v] for v in y]),
        fitted_on="out-of-fold",
        name="train_out_of_fold",
        also=probas,
    )
    model = TransferModel(fx, probe, {})
    model.temperature = cal.temperature
    if len(y) <= MAX_TRAIN_INDEX:
        model.train_index = {"X": X, "labels": list(y), "paths": [s.path for s in bf.samples]}
    views["temperature"] = cal.temperature
    return model, reports, cal.to_dict(), views


def final_finetune(
    ds: Dataset, tuner: Any, inner_val: list[Sample]
) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The chosen fine-tune as trained on the inner training images; its temperature fitted
    on the inner validation images; val (and test) scored once."""
    from transferlab.evaluate import calibrate, evaluate_predictions
    from transferlab.models import FinetunedModel

    model = FinetunedModel.from_tuner(tuner, progress=False)
    classes = list(tuner.classes_)
    index = {c: i for i, c in enumerate(classes)}

    def predict(samples: list[Sample]) -> tuple[np.ndarray, list[Sample]]:
        p, idx, _ = model.predict_proba_paths([s.path for s in samples], calibrated=False)
        return p, [samples[i] for i in idx]

    p_in, kept_in = predict(inner_val)
    reports, probas, views = {}, {}, {}
    for name, samples in (("val", ds.val), ("test", ds.test)):
        if not samples:
            continue
        p, kept = predict(samples)
        labels = labels_of(kept)
        probas[name] = (p, np.array([index[v] for v in labels]))
        reports[name] = evaluate_predictions(list(labels), p, classes)
        if name == "val":
            paths = [s.path for s in kept]
            views = {
                "paths": paths,
                "labels": list(labels),
                "raw_proba": p,
                "classes": classes,
                # the map's images only, through the fine-tuned network (as `finetune` does)
                "features": lambda rows, paths=paths: finetuned_embedding(
                    model, [paths[i] for i in rows]
                ),
            }
    if "val" not in reports:
        raise DatasetError(f"{ds.root}: no validation image could be read")
    cal = calibrate(
        p_in,
        np.array([index[v] for v in labels_of(kept_in)]),
        fitted_on="inner validation",
        name="inner_val",
        also=probas,
    )
    model.temperature = cal.temperature
    views["temperature"] = cal.temperature
    return model, reports, cal.to_dict(), views


def weights_sha(model: Any) -> str | None:
    fx = getattr(model, "extractor", None)
    if fx is not None:
        return fx.card_.weights_sha256
    return getattr(getattr(model, "backbone", None), "weights_sha256", None)
