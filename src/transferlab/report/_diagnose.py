"""The `diagnose` run's plots and page: findings first, then per-layer figures and image stats."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferlab._internal.json import dumps
from transferlab._internal.plotting import pyplot as _pyplot
from transferlab.report._html import html_table, write_html_report

__all__ = ["diagnosis_plots", "findings_html", "write_diagnosis_report"]


def diagnosis_plots(
    out: Path, probe: Any, gap: Any, shift_t: Any, shift_r: Any, scores: dict[str, dict[str, float]]
) -> list[tuple[str, Path]]:
    """layer_probe.png, domain_gap.png and bn_shift.png: (caption, path) of each."""
    from transferlab.diagnose import LayerProfileDisplay as Profile

    by_layer = Profile.from_layer_probe(probe)
    by_layer.series["kNN (k=5)"] = [scores[la]["knn_accuracy"] for la in probe.layers]
    t, r = shift_t.by_tap(), shift_r.by_tap()
    taps = [k for k in t if k in r]
    shift = {"target images": [t[k] for k in taps], "reference photos": [r[k] for k in taps]}
    figures = [  # file, caption, figure size, the profiles drawn side by side
        ("layer_probe.png", "Probe accuracy by layer (cross-validated)", (7, 4), [by_layer]),
        (
            "domain_gap.png",
            "Domain gap to the reference, by layer",
            (11, 4),
            [
                Profile(
                    gap.layers,
                    {"target vs reference": gap.classifier_accuracy},
                    ylabel="domain classifier balanced accuracy",
                    title="Can a linear classifier tell the domains apart?",
                    hline=(0.5, "indistinguishable"),
                ),
                Profile(
                    gap.layers,
                    {"MMD²": gap.mmd},
                    ylabel="MMD² (Gaussian kernel)",
                    title="Distribution distance",
                ),
            ],
        ),
        (
            "bn_shift.png",
            "Shift of BatchNorm statistics from the pretrained ones",
            (7, 4),
            [
                Profile(
                    taps,
                    shift,
                    ylabel="BN shift (W2, in running std units)",
                    title="BatchNorm statistics vs ImageNet's, by depth",
                )
            ],
        ),
    ]
    plt = _pyplot()
    pngs = []
    for name, caption, size, profiles in figures:
        fig, axes = plt.subplots(
            1, len(profiles), figsize=size, constrained_layout=True, squeeze=False
        )
        for ax, profile in zip(axes[0], profiles, strict=True):
            profile.plot(ax)
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        pngs.append((caption, out / name))
    return pngs


_BADGE = {"problem": "#c62828", "warning": "#ef6c00", "info": "#1565c0", "ok": "#2e7d32"}


def findings_html(findings: Sequence[dict[str, Any]]) -> str:
    parts = []
    for f in findings:
        colour = _BADGE.get(f["severity"], "#555")
        cmds = "".join(f"<div><code>{html.escape(c)}</code></div>" for c in f.get("commands", []))
        ev = html.escape(dumps(f["evidence"], indent=None)[:600])
        parts.append(
            f"<div style='border-left:5px solid {colour};padding:.4em .9em;margin:.7em 0;background:#fafafa'>"
            f"<b style='color:{colour}'>{html.escape(f['severity'].upper())}</b> "
            f"<b>{html.escape(f['title'])}</b><p>{html.escape(f['recommendation'])}</p>{cmds}"
            f"<details><summary class='muted'>evidence</summary><code>{ev}</code></details></div>"
        )
    return "".join(parts)


def _split_table(shift: Mapping[str, Any]) -> str:
    """Per layer: can a linear classifier tell the splits apart, and the probe's accuracy within
    the training domain (cross-validated) against on the other split."""
    rows = [
        [
            la,
            v["domain_accuracy"],
            v["mmd"],
            v.get("within", float("nan")),
            v.get("cross", float("nan")),
        ]
        for la, v in shift["layers"].items()
    ]
    verdict = "another domain" if shift["shifted"] else "the same domain"
    head = (
        f"<p>{shift['n_train']} training images against {shift['n_other']} {shift['other']} "
        f"images: {verdict} ({html.escape(str(shift['rule']))}).</p>"
    )
    return head + html_table(
        [
            "layer",
            "domain clf acc",
            "MMD²",
            "probe acc within train (CV)",
            f"probe acc on {shift['other']}",
        ],
        rows,
    )


def write_diagnosis_report(
    out: Path, d: Mapping[str, Any], pngs: Sequence[tuple[str, Path]]
) -> Path:
    """report.html of `diagnose` from its diagnosis.json content."""
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
    head = ["layer", "dim", "probe acc", "kNN acc", "LogME", "domain clf acc", "MMD²"]
    split = d.get("split_shift") or {}
    if split.get("layers") and all("cross" in v for v in split["layers"].values()):
        # the splits differ: the mixed cross-validated figure above says nothing about the
        # other domain, so each layer also gets its within- and cross-domain accuracy
        other = split["other"]
        head += ["within train (CV)", f"train -> {other}"]
        for row in rows:
            v = split["layers"].get(row[0], {})
            row += [v.get("within", float("nan")), v.get("cross", float("nan"))]
    table = html_table(head, rows)
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
            **({"skipped": "; ".join(d["skipped"])} if d.get("skipped") else {}),
        },
        sections=[
            ("Findings and advice", findings_html(d["findings"])),
            *(
                [
                    (
                        f"Training images against {d['split_shift']['other']}",
                        _split_table(d["split_shift"]),
                    )
                ]
                if d.get("split_shift")
                else []
            ),
            *(
                [
                    (
                        "Skipped measures",
                        "<ul>"
                        + "".join(f"<li>{html.escape(x)}</li>" for x in d["skipped"])
                        + "</ul>",
                    )
                ]
                if d.get("skipped")
                else []
            ),
            ("Per layer", table),
            ("Image statistics", stats),
        ],
        images=pngs,
    )
