"""Training jobs of kind ``auto``: `transferlab.pipeline.run_auto` on a collection's images.

The job runner (`transferlab.serve.jobs`) calls `run_auto_job` and records the model it saved,
as it does for a probe or a fine-tune; this module only turns the collection into the run's
`Dataset` and its stage lines into the job's progress.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlab.data import Dataset, Sample, stratified_split
from transferlab.exceptions import DatasetError, InvalidParameterError
from transferlab.serve.store import Collection, Example, Store

__all__ = ["MIN_IMAGES_PER_LABEL", "VAL_FRACTION", "AutoOutcome", "auto_dataset", "run_auto_job"]

#: share of each label's images held out (at least one) to report the kept model on
VAL_FRACTION = 0.2
#: auto trains on 2+ images of each label after that hold-out (it compares candidates on some)
MIN_IMAGES_PER_LABEL = 3


@dataclass
class AutoOutcome:
    """What the runner records: the saved model directory, its classes and metrics.json, and
    the job's closing message (what was chosen, at what validation accuracy)."""

    model_dir: Path
    classes: list[str]
    metrics: dict[str, Any]
    message: str


def auto_dataset(store: Store, coll: Collection, examples: Sequence[Example]) -> Dataset:
    """The collection as a `Dataset`: its stored images, a fifth of each label held out (at
    random, seeded) for the validation figures that no choice of auto reads.

    Raises:
        InvalidParameterError: a multi-label collection (auto is single-label).
        DatasetError: fewer than 2 labels, or a label with fewer than 3 images.
    """
    if coll.multi_label:
        raise InvalidParameterError(
            "kind='auto' trains single-label collections; this one is multi-label: train it "
            "with kind='linear_probe' or kind='finetune'"
        )
    counts = Counter(e.labels[0] for e in examples)
    if len(counts) < 2:
        raise DatasetError(
            f"kind='auto' needs images of at least 2 labels; this collection has {len(counts)}"
        )
    few = {lab: n for lab, n in sorted(counts.items()) if n < MIN_IMAGES_PER_LABEL}
    if few:
        raise DatasetError(
            f"kind='auto' needs at least {MIN_IMAGES_PER_LABEL} images of each label (one is "
            "held out for validation, and it trains and compares models on the others); too "
            "few: " + ", ".join(f"{lab!r} has {n}" for lab, n in few.items())
        )
    samples = [
        Sample(str(store.image_path(e.image_sha256, e.image_ext)), e.labels[0]) for e in examples
    ]
    train, val = stratified_split(samples, VAL_FRACTION, seed=0)
    return Dataset(
        train=train,
        val=val,
        classes=sorted(counts),
        source="collection",
        root=f"collection {coll.id}",
        split_note=f"{len(train)} train / {len(val)} validation images "
        f"(about {VAL_FRACTION:.0%} of each label held out at random)",
    )


def run_auto_job(
    store: Store,
    coll: Collection,
    examples: Sequence[Example],
    job_id: str,
    params: dict[str, Any],
    *,
    device: str,
    report: Callable[[float, str], None],
) -> AutoOutcome:
    """Run auto on the collection into the job's model folder (``model/`` inside it, beside the
    run's report); `report(progress, message)` gets each stage line and may raise to stop the
    run at that stage (the server shutting down)."""
    from transferlab.pipeline import AutoConfig, run_auto

    data = auto_dataset(store, coll, examples)
    budget = float(params["budget_s"])
    config = AutoConfig(
        data=data,
        out=store.model_dir(coll.id, job_id),
        budget_s=budget,
        backbones=tuple(params["backbones"]),
        weights=str(params["weights"]),
        device=device,
        num_workers=0,  # the service's own threads; no processes forked from a server
        no_cache=True,  # as the server's extractor: vectors live in the database, not a cache
        overwrite=True,
        progress=False,
        on_step=_progress(budget, report),
    )
    result = run_auto(config)
    if result.model_dir is None:  # run_auto always saves one
        raise RuntimeError("auto finished without saving a model")
    metrics = result.metrics.to_dict()
    chosen = metrics["chosen"]
    return AutoOutcome(
        model_dir=result.model_dir,
        classes=[str(c) for c in metrics["classes"]],
        metrics=metrics,
        message=f"model ready: chose {chosen['name']} ({chosen['kind']}), validation accuracy "
        f"{metrics['accuracy']:.3f} on {metrics['n_val']} held-out images",
    )


def _progress(budget: float, report: Callable[[float, str], None]) -> Callable[[str], None]:
    """`on_step` for the run: the stage line as the job's message, and as progress the share of
    the budget spent (0.05-0.95), moving on by at least 0.02 a stage. A run usually ends well
    inside its budget: the bar then jumps to done."""
    t0 = time.monotonic()
    last = [0.05]

    def on_step(line: str) -> None:
        spent = min((time.monotonic() - t0) / budget, 1.0)
        last[0] = min(0.95, max(last[0] + 0.02, 0.05 + 0.9 * spent))
        report(round(last[0], 3), "auto " + re.sub(r"\[\s+", "[", line.strip()))

    return on_step
