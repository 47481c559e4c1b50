"""The `audit` run's page: findings first, then each kind of problem as thumbnails side by side,
worst first (leakage, label errors, duplicates within a split, outliers, image problems)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferlab.report._diagnose import findings_html
from transferlab.report._html import html_table, thumbnail_html, thumbnail_row, write_html_report

__all__ = ["write_audit_report"]

_RED, _AMBER, _GREY = "#c62828", "#ef6c00", "#bbb"


def _more(n_all: int, n_shown: int) -> str:
    if n_all <= n_shown:
        return ""
    return f"<p class='muted'>{n_all - n_shown} more in audit.json.</p>"


def _groups(groups: list[dict[str, Any]], max_shown: int) -> str:
    parts = []
    for g in groups[:max_shown]:
        colour = _RED if g["cross_split"] or g["label_conflict"] else _AMBER
        sim = "" if g["kind"] == "exact" else f", similarity {g['similarity']:.3f}"
        parts.append(f"<p class='muted'>{html.escape(g['kind'])}{sim}</p>")
        parts.append(
            thumbnail_row(
                [
                    thumbnail_html(p, f"{sp} · {lab}\n{Path(p).name}", colour=colour)
                    for p, sp, lab in zip(g["paths"], g["splits"], g["labels"], strict=True)
                ]
            )
        )
    return "".join(parts) + _more(len(groups), max_shown)


def write_audit_report(out: Path, m: Mapping[str, Any], *, max_shown: int = 40) -> Path:
    """report.html of `audit` from its audit.json content (`AuditMetrics` or the dict)."""
    d = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    sections = [("Findings", findings_html(d["findings"]))]
    dups = d["exact_duplicates"] + d["near_duplicates"]
    across = [g for g in dups if g["cross_split"]]
    within = [g for g in dups if not g["cross_split"]]
    if across:
        sections.append(("Duplicates across splits (leakage)", _groups(across, max_shown)))
    li = d["label_issues"]
    body = f"<p class='muted'>{html.escape(d['label_issues_note'])}</p>"
    if li:
        body += thumbnail_row(
            [
                thumbnail_html(
                    r["path"],
                    f"given {r['given']} ({r['given_probability']:.2f})\n"
                    f"suggested {r['suggested']} ({r['confidence']:.2f})\n{r['split']} · "
                    f"{Path(r['path']).name}",
                    colour=_AMBER,
                )
                for r in li[:max_shown]
            ]
        ) + _more(len(li), max_shown)
    sections.append(("Likely label errors", body))
    if within:
        sections.append(("Duplicates within a split", _groups(within, max_shown)))
    if d["outliers"]:
        sections.append(
            (
                "Outliers (far from every other image)",
                f"<p class='muted'>mean cosine distance to the 10 nearest images above "
                f"{d['outlier_threshold']:.3f} (Q3 + 1.5 IQR of all images)</p>"
                + thumbnail_row(
                    [
                        thumbnail_html(
                            r["path"],
                            f"{r['label']} · {r['split']}\nscore {r['score']:.3f}",
                            colour=_GREY,
                        )
                        for r in d["outliers"][:max_shown]
                    ]
                )
                + _more(len(d["outliers"]), max_shown),
            )
        )
    ip = d["image_problems"]
    rows = [["broken", r["path"], r["reason"]] for r in ip["broken"]]
    rows += [["tiny", r["path"], f"{r['width']} x {r['height']}"] for r in ip["tiny"]]
    rows += [["aspect", r["path"], f"{r['aspect']}:1"] for r in ip["extreme_aspect"]]
    rows += [["mode", r["path"], r["mode"]] for r in ip["odd_modes"]]
    if rows:
        sections.append(("Image problems", html_table(["problem", "file", "detail"], rows)))
    classes = sorted({c for counts in d["splits"].values() for c in counts})
    sections.append(
        (
            "Images per class and split",
            html_table(
                ["class", *d["splits"]],
                [[c, *(d["splits"][s].get(c, 0) for s in d["splits"])] for c in classes],
            ),
        )
    )
    problems = [f for f in d["findings"] if f["severity"] in ("problem", "warning")]
    return write_html_report(
        out / "report.html",
        title=f"transferlab audit — {Path(d['dataset']['path']).name}",
        summary={
            "finding": problems[0]["title"] if problems else d["findings"][0]["title"],
            "images": d["n_images"],
            "split": d["dataset"]["split"],
            "leakage (images outside train with a copy)": d["leakage"]["images_outside_train"],
            "duplicate groups": len(dups),
            "likely label errors": len(li),
            "outliers": len(d["outliers"]),
            "features": f"{', '.join(d['backbones'])} / {d['layer']}",
            "time (s)": d["seconds"],
        },
        sections=sections,
    )
