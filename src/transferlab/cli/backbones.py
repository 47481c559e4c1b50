"""`transferlab backbones`: what can be loaded, from where, at what size, with which layers."""

from __future__ import annotations

import typer

from transferlab.cli._common import command, out, print_json


@command("backbones")
def backbones_cmd(
    pattern: str = typer.Argument("*", help="Wildcard on names, e.g. 'efficientnet*'."),
    timm: bool = typer.Option(
        False, "--timm", help="Also list every timm architecture (weights from the hub)."
    ),
    taps: bool = typer.Option(
        True, "--taps/--no-taps", help="Show each layer tap and its output size."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List backbones: weight source, input size, preprocessing and layer taps.

    Examples:
      transferlab backbones
      transferlab backbones 'resnet*' --timm --no-taps
    """
    from transferlab.backbones import get_backbone_spec, list_backbones, load_backbone

    names = list_backbones(pattern, include_timm=timm)
    rows = []
    for name in names:
        spec = get_backbone_spec(name)
        row = {
            "name": name,
            "timm_name": spec.timm_name,
            "weights": "packaged (offline)"
            if spec.weights.startswith("package:")
            else spec.weights,
            "license": spec.license,
        }
        if taps:
            bb = load_backbone(name, weights="random")  # shapes only: no weights needed
            row["preprocessing"] = bb.preprocessing()
            row["taps"] = [
                {"name": t.name, "module": t.module, "dim": t.dim, "spatial": list(t.spatial)}
                for t in bb.tap_info()
            ]
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="transferlab backbones", show_lines=taps)
    table.add_column("name", no_wrap=True)
    table.add_column("timm model", no_wrap=True)
    for col in ("weights", "input", "layer taps (pooled dim)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        pre = r.get("preprocessing", {})
        size = "x".join(str(s) for s in pre.get("input_size", [])[1:])
        inp = (
            f"{size} {pre.get('interpolation', '')}\nmean {pre.get('mean')}\nstd {pre.get('std')}"
            if pre
            else "-"
        )
        tap_txt = ", ".join(f"{t['name']}({t['dim']})" for t in r.get("taps", [])) or "-"
        table.add_row(r["name"], r["timm_name"], r["weights"], inp, tap_txt)
    out.print(table)
    if not names:
        out.print(f"no backbone matches {pattern!r}")
