"""The `auto` run's page: the model kept and why (the decision log, each candidate with its
score and cost), the data check and the shift found, then the usual evaluation."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferlab.report._html import domain_summary, html_table, per_class_table, write_html_report

__all__ = ["write_auto_report"]


def _num(v: Any, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def write_auto_report(
    out: Path, ds: Any, m: Mapping[str, Any], images: Sequence[tuple[str, Path]]
) -> Path:
    """report.html of `auto` from its metrics and the evaluation images."""
    chosen = m["chosen"]
    budget = m["budget"]
    summary = {
        "validation accuracy (chosen model, scored once)": m["accuracy"],
        "balanced accuracy": m["balanced_accuracy"],
        **({"test accuracy": m["test"]["accuracy"]} if "test" in m else {}),
        "chosen": chosen["name"],
        "why": chosen["rule"],
        **domain_summary(m),
        "domain shift": m["shift"].get("kind", "?"),
        "time": f"{budget.get('seconds', m['seconds']):.0f} s of a {budget['budget_s']:.0f} s budget",
        "images": f"{m['n_train']} train, {m['n_val']} val"
        + (f", {m['n_test']} test" if m.get("n_test") else ""),
    }
    rows = [
        [
            c["name"],
            c["status"],
            _num(c.get("logme")),
            _num(c.get("cv_score")),
            _num(c.get("inner_score")),
            _num(c.get("expected_score")),
            _num(c.get("estimated_s"), 0),
            _num(c.get("seconds"), 1),
            c.get("why", ""),
        ]
        for c in sorted(
            m["candidates"],
            key=lambda c: ({"chosen": 0, "kept": 1, "failed": 2}.get(c["status"], 3),),
        )
    ]
    log = html_table(
        [
            "candidate",
            "status",
            "LogME",
            f"CV {m['metric']} (train)",
            f"inner-val {m['metric']}",
            "expected (fine-tunes)",
            "estimated s",
            "seconds",
            "why",
        ],
        rows,
    )
    findings = html_table(
        ["check", "severity", "finding"],
        [[f["code"], f["severity"], f["message"]] for f in m["data_check"]["findings"]],
    )
    shift = m["shift"]
    shift_html = (
        "<p>"
        + html.escape(
            f"measured on {shift.get('measured_on', '?')} ({shift.get('backbone', '?')}): "
            f"{shift.get('kind')}"
            + (f" from {shift['first_shifted_tap']}" if shift.get("first_shifted_tap") else "")
            + f"; recipes tried: {', '.join(shift.get('recipes', [])) or 'none'}"
            + (f". Skipped: {shift['skipped']}" if shift.get("skipped") else "")
        )
        + "</p>"
    )
    used = html_table(["figure", "images"], [[k, v] for k, v in m["images_used"].items()])
    stages = html_table(["stage", "seconds"], [[k, v] for k, v in budget.get("stages", {}).items()])
    cmd = f"transferlab predict {os.fspath(out / 'model')} IMAGE..."
    sections = [
        ("Decision log", log),
        ("Which images each figure came from", used),
        ("Data check (training images)", findings),
        ("Domain shift", shift_html),
        ("Per-class metrics (validation)", per_class_table(m["per_class"])),
        ("Time per stage", stages),
        ("Use the model", f"<p><code>{html.escape(cmd)}</code></p>"),
    ]
    return write_html_report(
        out / "report.html",
        title=f"transferlab auto — {Path(ds.root).name}",
        summary=summary,
        sections=sections,
        images=list(images),
    )
