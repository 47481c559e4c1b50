"""`transferlab audit`: duplicates and leakage, likely label errors, outliers, imbalance and
image problems of a labelled dataset, before training on it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from transferlab.cli import _options as opt
from transferlab.cli._common import command, config_from, default_run_dir, out, print_json

_COLOURS = {"problem": "red", "warning": "yellow", "info": "cyan", "ok": "green"}


@command("audit")
def audit_cmd(
    data: opt.LabelledData,
    out_dir: Path | None = opt.run_out("audit", "Output directory (audit.json, report.html)"),
    backbones: str = typer.Option(
        "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
        "--backbones",
        help="Comma-separated backbones whose features are concatenated (the first also finds "
        "near-duplicates).",
    ),
    layer: opt.Layer = "pre_logits",
    weights: opt.Weights = "default",
    cv: int = typer.Option(5, "--cv", min=2, help="Folds of the probe that ranks label errors."),
    max_shown: int = typer.Option(
        40, "--max-shown", min=1, help="Images of each kind drawn in report.html."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
    as_json: bool = typer.Option(False, "--json", help="Print audit.json to stdout."),
) -> None:
    """Audit a dataset: the same image in train and val (leakage), duplicates, images that are
    probably mislabelled (with the label a probe suggests), outliers, class imbalance and
    broken, tiny or odd images; each shown as thumbnails, worst first, in report.html.

    Examples:
      transferlab audit ../shared/datasets/pneumoniamnist --out runs/audit-pneumonia
      transferlab audit photos/ --backbones efficientnet_lite0 --json
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.pipeline import AuditConfig, run_audit

    cfg = config_from(
        AuditConfig,
        params,
        data=str(data),
        out=out_dir or default_run_dir(data, "audit"),
        backbones=tuple(b.strip() for b in backbones.split(",") if b.strip()),
        progress=not as_json,
    )
    res = run_audit(cfg)
    m = res.metrics
    if as_json:
        print_json(m)
        return
    out.print(
        f"[bold]audit of {escape(str(data))}[/]: {m['n_images']} images in {m['seconds']:.1f} s"
    )
    for f in m["findings"]:
        colour = _COLOURS.get(f["severity"], "white")
        out.print(f"  [{colour}]{f['severity'].upper():8}[/] {escape(f['title'])}")
    for g in [g for g in m["exact_duplicates"] + m["near_duplicates"] if g["cross_split"]][:5]:
        pairs = ", ".join(f"{sp}:{p}" for p, sp in zip(g["paths"], g["splits"], strict=True))
        out.print(f"    leak ({g['kind']}): {pairs}", markup=False, highlight=False)
    for r in m["label_issues"][:5]:
        out.print(
            f"    label? {r['path']}: given {r['given']}, suggested {r['suggested']} "
            f"({r['confidence']:.2f})",
            markup=False,
            highlight=False,
        )
    out.print(f"audit:  {res.metrics_file}", markup=False)
    out.print(f"report: {res.report}", markup=False)
