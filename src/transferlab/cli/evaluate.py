"""`transferlab evaluate`: score a saved model on labelled images, with plots and a report."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, config_from, default_run_dir, out, print_json


@command("evaluate")
def evaluate_cmd(
    model_dir: opt.ModelDir,
    data: Path = typer.Argument(..., help="Labelled images: a dataset folder or CSV."),
    out_dir: Path | None = opt.run_out("evaluate", "Report directory"),
    split: str = typer.Option(
        "auto", "--split", help="auto (test, else val, else all), train, val, test or all."
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        help="Also report accuracy and coverage when predictions under this confidence are set aside.",
    ),
    grid_size: int = typer.Option(
        12, "--grid-size", min=1, help="Images in the top-losses and examples grids."
    ),
    overwrite: opt.Overwrite = False,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json."),
) -> None:
    """Metrics (accuracy, balanced, top-k, log loss, per class, ECE), confusion, most-confused
    pairs, top losses, calibration and accuracy-coverage plots, predictions.csv, report.html.

    Examples:
      transferlab evaluate runs/hym/model ../shared/datasets/hymenoptera --out runs/hym-eval
      transferlab evaluate runs/pneu/model ../shared/datasets/pneumoniamnist --split test --threshold 0.9
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.pipeline import EvaluateConfig, run_evaluate

    out_path = out_dir or default_run_dir(data, "evaluate")
    res = run_evaluate(config_from(EvaluateConfig, params, out=out_path))
    m = res.metrics
    if as_json:
        print_json(m)
        return
    if m.get("multi_label"):
        out.print(
            f"mAP {m['mAP']:.4f}  micro F1 {m['f1_micro']:.4f}  macro F1 {m['f1_macro']:.4f}  on {m['n']} images"
        )
    else:
        out.print(
            f"[bold green]accuracy {m['accuracy']:.4f}[/]  balanced {m['balanced_accuracy']:.4f}  "
            f"log loss {m['log_loss']:.4f}  ECE {m['ece']:.4f}  on {m['n']} images ({m['split']})"
        )
        for d in m["most_confused"][:3]:
            out.print(f"  confused: {d['true']} -> {d['predicted']} ({d['count']}x)", markup=False)
        if "threshold" in m:
            t = m["threshold"]
            out.print(
                f"  threshold {t['threshold']}: {t['kept']} kept ({t['coverage']:.0%}) with accuracy "
                f"{t['accuracy_kept']:.4f}, {t['uncertain']} uncertain"
            )
    if m["n_skipped"]:
        out.print(f"  skipped {m['n_skipped']} unreadable images (listed in metrics.json)")
    out.print(f"  report: {res.report}", markup=False)
