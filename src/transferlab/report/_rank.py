"""The `rank` run's table and page: every backbone x layer with its scores and ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferlab._internal.plotting import pyplot as _pyplot
from transferlab.report._html import html_table, write_html_report

__all__ = ["SCORE_COLUMNS", "rank_table", "write_rank_report"]

#: the transferability scores a rank shows, in column order (each row holds them, with ranks)
SCORE_COLUMNS = ("logme", "leep", "nce", "hscore", "knn_accuracy")


def rank_table(result: Any) -> tuple[list[str], list[list[Any]]]:
    """Header and rows for display: sorted by LogME, each score as value (rank)."""
    header = ["backbone", "layer", "dim", *[f"{s}" for s in SCORE_COLUMNS]]
    if result.tau:
        header.append("probe acc")
    rows = []
    for r in sorted(result.rows, key=lambda r: r["logme_rank"]):
        cells = [r["backbone"], r["layer"], r["dim"]]
        cells += [f"{r[s]:.3f} (#{r[f'{s}_rank']})" for s in SCORE_COLUMNS]
        if result.tau:
            cells.append(f"{r['probe_accuracy']:.3f}")
        rows.append(cells)
    return header, rows


def write_rank_report(out: Path, dataset: str, result: Any) -> Path:
    """report.html of `rank`: scores, gaps to the best, and (verified) each score's tau."""
    header, rows = rank_table(result)
    gaps = [
        [r["backbone"], r["layer"], *[round(r[f"{s}_gap"], 4) for s in SCORE_COLUMNS]]
        for r in sorted(result.rows, key=lambda r: r["logme_rank"])
    ]
    sections = [
        ("Scores per backbone × layer (value, rank; higher is better)", html_table(header, rows)),
        (
            "Relative to the best row of each score (0 = best; same units as the score)",
            html_table(["backbone", "layer", *SCORE_COLUMNS], gaps),
        ),
    ]
    images = []
    best = result.best("logme")
    summary = {
        "LogME's pick": f"{best['backbone']} / {best['layer']}",
        "images": result.n_images,
        "next": "; ".join(result.next_steps()),
    }
    if result.tau:
        summary["Kendall tau of LogME vs probe accuracy"] = round(result.tau["logme"], 3)
        measured = max(result.rows, key=lambda r: r["probe_accuracy"])
        summary["measured best"] = (
            f"{measured['backbone']} / {measured['layer']} ({measured['probe_accuracy']:.3f})"
        )
        sections.append(
            (
                "How well each score predicts the probe's accuracy (Kendall tau; 1 = same order)",
                html_table(["score", "tau"], [[s, round(v, 3)] for s, v in result.tau.items()]),
            )
        )
        plt = _pyplot()
        fig, axes = plt.subplots(
            1, len(SCORE_COLUMNS), figsize=(4 * len(SCORE_COLUMNS), 3.6), constrained_layout=True
        )
        for ax, s in zip(axes, SCORE_COLUMNS, strict=True):
            for bbn in dict.fromkeys(r["backbone"] for r in result.rows):
                pts = [(r[s], r["probe_accuracy"]) for r in result.rows if r["backbone"] == bbn]
                ax.scatter(*zip(*pts, strict=True), label=bbn, s=18)
            ax.set_xlabel(s)
            ax.set_title(f"tau = {result.tau[s]:.2f}")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("probe accuracy")
        axes[0].legend(fontsize=7)
        fig.savefig(out / "scores_vs_accuracy.png", dpi=90)
        plt.close(fig)
        images.append(("Scores against measured probe accuracy", out / "scores_vs_accuracy.png"))
    from transferlab.diagnose import SCORES

    notes = dict(SCORES)
    notes["leep"] = (
        notes["leep"] + " On feature layers this column is N-LEEP (" + notes.pop("nleep") + ")."
    )
    sections.append(
        (
            "What the scores mean",
            html_table(["score", "meaning"], [[k, v] for k, v in notes.items()]),
        )
    )
    return write_html_report(
        out / "report.html",
        title=f"transferlab rank — {Path(dataset).name}",
        summary=summary,
        sections=sections,
        images=images,
    )
