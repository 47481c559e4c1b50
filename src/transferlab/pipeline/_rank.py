"""`run_rank`: score every backbone x layer on the data without training (LogME, LEEP, NCE,
H-score, kNN), optionally verified against the measured probe accuracy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.deprecation import warn_once
from transferlab._internal.json import write_json
from transferlab._internal.rundir import prepare_out
from transferlab.backbones import WEIGHT_SOURCES
from transferlab.exceptions import InvalidParameterError
from transferlab.pipeline._results import Metrics, RunResult
from transferlab.pipeline._shared import (
    ExtractorSettings,
    default_layers,
    features_of,
    labelled_sample,
)
from transferlab.report import SCORE_COLUMNS as SCORE_COLUMNS
from transferlab.report import rank_table as rank_table

__all__ = ["DEFAULT_BACKBONES", "RankConfig", "RankResult", "rank_run", "rank_table", "run_rank"]

logger = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@dataclass(frozen=True)
class RankConfig(ExtractorSettings):
    """Everything `run_rank` needs; `out` None scores without writing files."""

    data: str | os.PathLike[str]
    out: str | os.PathLike[str] | None = None
    backbones: Sequence[str] = DEFAULT_BACKBONES
    #: one source for every backbone (``default``, ``hub``, ``random``, or a file when there
    #: is one backbone), or one per backbone, in the same order
    weights: str | Sequence[str] = "default"
    layers: Sequence[str] | None = None
    verify: bool = False
    max_images: int | None = 2000
    cv: int = 5
    seed: int = 0
    val_fraction: float = 0.2
    cache_dir: str | None = None
    batch_size: int = 32
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    on_step: Callable[[str], None] | None = field(default=None, compare=False)


@dataclass
class RankResult(Metrics):
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
    #: backbone -> its family (`transferlab.backbones.FAMILIES`), for the fine-tuning flags
    families: dict[str, str] = field(default_factory=dict)
    #: backbone -> the weights it was scored with, when not the default
    weights: dict[str, str] = field(default_factory=dict)
    data: str = "DATA"
    #: the dataset's root, written first in rank.json
    dataset: str = ""

    FILE = "rank.json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kendall_tau": self.tau,
            "n_images": self.n_images,
            "seconds": round(self.seconds, 1),
            "next_steps": self.next_steps(),
        }

    def write(self, out: str | os.PathLike[str]) -> Path:
        """rank.json: the dataset, then `to_dict`."""
        return write_json(Path(out) / self.FILE, {"dataset": self.dataset, **self.to_dict()})

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
        from transferlab.diagnose import stage_after

        row = self.pick()
        name, layer = row["backbone"], row["layer"]
        bb = f" --backbone {name}"
        if name in self.weights:
            bb += f" --weights {self.weights[name]}"
        has_bn = self.families.get(name, "batchnorm-cnn") == "batchnorm-cnn"
        at = "" if layer == "pre_logits" else f" --layer {layer}"
        steps = [f"transferlab fit {self.data}{bb}{at}"]
        n = self.n_stages.get(name, 0)
        freeze_to = stage_after(layer, n) if n else None
        if freeze_to is not None:
            flags = "--bn freeze --lr 1e-3 --lr-mult 10" if has_bn else "--layer-decay 0.75"
            steps.append(f"transferlab finetune {self.data}{bb} --freeze-to {freeze_to} {flags}")
        elif layer in ("pre_logits", "logits"):
            steps.append(f"transferlab finetune {self.data}{bb}")
        return steps


def run_rank(config: RankConfig) -> RunResult:
    """Score every backbone x layer on `data` without training (LogME, LEEP, NCE, H-score, kNN).

    LEEP and NCE need a source model's class probabilities: on ``logits`` they are ImageNet's
    softmax (the original LEEP); on feature layers a Gaussian mixture's soft clusters stand in for
    them (N-LEEP, Li et al. 2021). With `verify`, each row also gets the cross-validated linear
    probe accuracy and each score its Kendall tau against it.
    """
    from transferlab.diagnose import (
        cv_probe_accuracy,
        hscore,
        kendall_tau,
        knn_accuracy,
        leep,
        logme,
        nce,
        pseudo_source_probs,
        softmax,
    )
    from transferlab.report import write_rank_report

    cfg = config
    step = cfg.on_step or (lambda s: logger.info(s))
    t0 = time.perf_counter()
    if not cfg.backbones:
        raise InvalidParameterError("rank needs at least one backbone")
    ds, samples = labelled_sample(cfg.data, cfg.val_fraction, cfg.seed, cfg.max_images)
    outp = Path(cfg.out) if cfg.out is not None else None
    if outp is not None:
        prepare_out(outp, cfg.overwrite)
    rows: list[dict[str, Any]] = []
    n_used = 0
    n_stages: dict[str, int] = {}
    families: dict[str, str] = {}
    used_weights: dict[str, str] = {}
    for name, weights in zip(cfg.backbones, _weights_per_backbone(cfg), strict=True):
        fx = cfg.extractor(name, weights=weights).fit()
        bb = fx.backbone_
        n_stages[name] = sum(1 for t in bb.layers if t.startswith("stage"))
        families[name] = bb.family.name
        if weights != "default":
            used_weights[name] = weights
        wanted = list(cfg.layers) if cfg.layers else default_layers(bb)
        for la in wanted:
            bb.check_layer(la)
        step(f"{name}: features of {len(samples)} images")
        feats, index, _ = features_of(
            fx, [s.path for s in samples], [*wanted, "logits"] if "logits" not in wanted else wanted
        )
        y = np.asarray([samples[i].label for i in index])
        n_used = len(y)
        source = softmax(feats["logits"])
        step(f"{name}: scores for {len(wanted)} layers")
        for la in wanted:
            X = feats[la]
            probs = source if la == "logits" else pseudo_source_probs(X, seed=cfg.seed)
            row = {
                "backbone": name,
                "layer": la,
                "dim": int(X.shape[1]),
                "logme": logme(X, y),
                "leep": leep(probs, y),
                "nce": nce(probs.argmax(1), y),
                "hscore": hscore(X, y),
                "knn_accuracy": knn_accuracy(X, y, cv=cfg.cv, seed=cfg.seed),
            }
            if cfg.verify:
                row["probe_accuracy"], row["probe_std"] = cv_probe_accuracy(
                    X, y, cv=cfg.cv, seed=cfg.seed
                )
            rows.append(row)
    for score in SCORE_COLUMNS:
        vals = np.asarray([r[score] for r in rows])
        order = (-vals).argsort(kind="stable")
        best = vals.max()
        for rank, i in enumerate(order, start=1):
            rows[i][f"{score}_rank"] = rank
            rows[i][f"{score}_gap"] = float(vals[i] - best)
    tau: dict[str, float] = {}
    if cfg.verify:
        acc = [r["probe_accuracy"] for r in rows]
        tau = {s: kendall_tau([r[s] for r in rows], acc) for s in SCORE_COLUMNS}
    result = RankResult(
        rows=rows,
        tau=tau,
        n_images=n_used,
        seconds=time.perf_counter() - t0,
        out=outp,
        n_stages=n_stages,
        families=families,
        weights=used_weights,
        data=str(cfg.data),
        dataset=ds.root,
    )
    if outp is None:
        return RunResult(metrics=result, out=None)
    result.report = write_rank_report(outp, ds.root, result)
    return RunResult.written(result, outp, report=result.report)


def _weights_per_backbone(cfg: RankConfig) -> list[str]:
    """`cfg.weights` as one source per backbone; a weights file fits one backbone only."""
    given = [cfg.weights] if isinstance(cfg.weights, str) else list(cfg.weights)
    if len(given) == 1 and (given[0] in WEIGHT_SOURCES or len(cfg.backbones) == 1):
        return given * len(cfg.backbones)
    if len(given) != len(cfg.backbones):
        raise InvalidParameterError(
            f"weights: {len(given)} given ({', '.join(given)}) for {len(cfg.backbones)} "
            f"backbones ({', '.join(cfg.backbones)}): give one of {', '.join(WEIGHT_SOURCES)} "
            "for all, or one per backbone, comma-separated in the same order"
        )
    return given


def rank_run(
    data: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **kwargs: Any
) -> RankResult:
    """Deprecated: `run_rank(RankConfig(...))` (its metrics are this `RankResult`)."""
    warn_once("transferlab.pipeline.rank_run", "transferlab.pipeline.run_rank")
    return run_rank(RankConfig(data=data, out=out, **kwargs)).metrics  # type: ignore[return-value]
