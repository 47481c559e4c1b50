"""The `fit` run's page: headline figures, per-class (or per-label) table, data, how to use it."""

from __future__ import annotations

import html
import os
from collections import Counter
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

__all__ = ["write_fit_multilabel_report", "write_fit_report"]


def write_fit_report(
    out: Path, ds: Any, m: Mapping[str, Any], images: Sequence[tuple[str, Path]]
) -> Path:
    """report.html of a single-label `fit` from its metrics, with `images` ((caption, PNG)
    pairs: the run's views of its validation images) after the tables."""
    summary = {
        "validation accuracy": m["accuracy"],
        "balanced accuracy": m["balanced_accuracy"],
        "log loss": m["log_loss"],
        **({"test accuracy": m["test"]["accuracy"]} if "test" in m else {}),
        "backbone / layer": f"{m['backbone']} / {m['layer']} ({m['pool']} pool)",
        "probe": f"{m['classifier']} (C={m['C']:.3g})",
        "images": f"{m['n_train']} train, {m['n_val']} val"
        + (f", {m['n_test']} test" if m.get("n_test") else ""),
        "skipped (broken) images": m["n_skipped"],
        "calibration": f"temperature {m['calibration']['temperature']:.3g}; validation ECE "
        f"{m['calibration']['val']['ece_before']:.4f} -> {m['calibration']['val']['ece_after']:.4f}",
        **domain_summary(m),
        "time": f"{m['seconds']:.1f} s (extraction {m['stage_seconds']['extract']:.1f} s, {m['n_cached']} from cache)",
    }
    counts = Counter(s.label for s in ds.train)
    data_html = f"<p>{html.escape(ds.root)} — {html.escape(ds.split_note)}</p>" + html_table(
        ["class", "train images"], [[c, counts.get(c, 0)] for c in ds.classes]
    )
    sections = [
        ("Per-class metrics (validation)", per_class_table(m["per_class"])),
        ("Data", data_html),
    ]
    if m["skipped"]:
        rows = [[s["path"], s["reason"]] for s in m["skipped"]]
        sections.insert(
            0,
            (
                "Skipped images",
                "<div class='warn'>These files could not be used and were left out.</div>"
                + html_table(["file", "reason"], rows),
            ),
        )
    cmd = f"transferlab predict {os.fspath(out / 'model')} IMAGE..."
    sections.append(("Use the model", f"<p><code>{html.escape(cmd)}</code></p>"))
    return write_html_report(
        out / "report.html",
        title=f"transferlab fit — {Path(ds.root).name}",
        summary=summary,
        sections=sections,
        images=images,
    )


def write_fit_multilabel_report(out: Path, ds: Any, m: Mapping[str, Any]) -> Path:
    """report.html of a multi-label `fit` from its metrics."""
    summary = {
        "validation mAP": m["mAP"],
        "micro F1 (tuned thresholds)": m["f1_micro"],
        "macro F1 (tuned thresholds)": m["f1_macro"],
        "subset accuracy": m["accuracy"],
        "micro F1 at 0.5": m["at_threshold_0.5"]["f1_micro"],
        "backbone / layer": f"{m['backbone']} / {m['layer']}",
        "images": f"{m['n_train']} train, {m['n_val']} val",
        "skipped (broken) images": m["n_skipped"],
    }
    return write_html_report(
        out / "report.html",
        title=f"transferlab fit (multi-label) — {Path(ds.root).name}",
        summary=summary,
        sections=[("Per-label metrics (validation)", per_label_table(m["per_label"]))],
    )
