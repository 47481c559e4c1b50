"""The `finetune` run's page: the verdict against the linear probe, epochs, per-class table."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferlab.report._html import (
    domain_summary,
    html_table,
    per_class_table,
    per_label_table,
    write_html_report,
)

__all__ = ["write_finetune_multilabel_report", "write_finetune_report"]


def write_finetune_report(
    out: Path,
    ds: Any,
    m: Mapping[str, Any],
    curves: Path,
    images: Sequence[tuple[str, Path]],
) -> Path:
    """report.html of a single-label `finetune` from its metrics: the training curves, then
    `images` ((caption, PNG) pairs: the views of the validation images)."""
    cfg = m["config"]
    summary = {
        "validation accuracy (final model)": m["accuracy"],
        "linear probe, same validation images": m["probe_val_score"]
        if m["probe_val_score"] is not None
        else "n/a",
        "balanced accuracy": m["balanced_accuracy"],
        **({"test accuracy": m["test"]["accuracy"]} if "test" in m else {}),
        "backbone": m["backbone"],
        "schedule": f"{cfg['freeze_epochs']} frozen + {cfg['epochs']} unfrozen epochs, lr {cfg['lr']:g}, "
        f"one-cycle, BN {cfg['bn_policy']}, head from {cfg['head_init']}",
        "best epoch": f"{m['best_epoch']} of {m['epochs_run']} (selected on validation)",
        "WiSE-FT blend": (
            f"alpha {m['wise_alpha']:g} of the fine-tuned weights with the probe-initialised start "
            f"(validation accuracy per alpha: {', '.join(f'{a}: {v:.3f}' for a, v in m['wise_scores'].items())})"
            if m.get("wise_scores")
            else "off"
        ),
        "images": f"{m['n_train']} train, {m['n_val']} val"
        + (f", {m['n_test']} test" if m.get("n_test") else ""),
        "skipped (broken) images": m["n_skipped"],
        **domain_summary(m),
        "time": f"{m['seconds']:.0f} s ({m['train_images_per_second']:.1f} train img/s)",
    }
    hist = html_table(
        ["epoch", "phase", "train loss", "val loss", "val accuracy", "seconds"],
        [
            [
                h["epoch"],
                h["phase"],
                h["train_loss"],
                h["val_loss"],
                h["val_accuracy"],
                h["seconds"],
            ]
            for h in m["history"]
        ],
    )
    sections = [
        ("Verdict", f"<p>{html.escape(m['advice'])}</p>"),
        ("Epochs", hist),
        ("Per-class metrics (validation)", per_class_table(m["per_class"])),
    ]
    if m["skipped"]:
        sections.insert(
            1,
            (
                "Skipped images",
                html_table(["file", "reason"], [[s["path"], s["reason"]] for s in m["skipped"]]),
            ),
        )
    return write_html_report(
        out / "report.html",
        title=f"transferlab finetune — {Path(ds.root).name}",
        summary=summary,
        sections=sections,
        images=[("Training curves", curves), *images],
    )


def write_finetune_multilabel_report(
    out: Path, ds: Any, m: Mapping[str, Any], curves: Path
) -> Path:
    """report.html of a multi-label `finetune` from its metrics."""
    return write_html_report(
        out / "report.html",
        title=f"transferlab finetune (multi-label) — {Path(ds.root).name}",
        summary={
            "validation mAP": m["mAP"],
            "micro F1 (tuned thresholds)": m["f1_micro"],
            "macro F1": m["f1_macro"],
            "linear probe mAP": m["probe_val_score"] or "n/a",
            "backbone": m["backbone"],
            "images": f"{m['n_train']} train, {m['n_val']} val",
        },
        sections=[("Per-label metrics (validation)", per_label_table(m["per_label"]))],
        images=[("Training curves (validation mAP)", curves)],
    )
