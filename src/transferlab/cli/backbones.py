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
    recommended: bool = typer.Option(
        False,
        "--recommended",
        help="A short list of strong backbones to transfer from (hub names, input size, "
        "licence, size, family), marking those available offline, and each family's "
        "fine-tuning defaults.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List backbones: weight source, input size, preprocessing and layer taps.

    Examples:
      transferlab backbones
      transferlab backbones --recommended
      transferlab backbones 'resnet*' --timm --no-taps
    """
    from transferlab.backbones import get_backbone_spec, list_backbones, load_backbone

    if recommended:
        _recommended(as_json)
        return

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
            row["family"] = bb.family.name
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
        family = f"\n{r['family']}" if r.get("family") else ""
        table.add_row(r["name"], r["timm_name"] + family, r["weights"], inp, tap_txt)
    out.print(table)
    if not names:
        out.print(f"no backbone matches {pattern!r}")


def _recommended(as_json: bool) -> None:
    """`--recommended`: `RECOMMENDED` with timm's pretrained configs (no download) and each
    family's fine-tuning defaults (`FAMILY_DEFAULTS`)."""
    import timm
    import torch

    from transferlab.backbones import FAMILIES, RECOMMENDED, family_of, get_backbone_spec
    from transferlab.finetune import FAMILY_DEFAULTS

    rows = []
    for name, why in RECOMMENDED.items():
        spec = get_backbone_spec(name)
        cfg = timm.models.get_pretrained_cfg(spec.timm_name)
        with torch.device("meta"):  # sizes and family without memory or weights
            model = timm.create_model(spec.timm_name, pretrained=False)
        rows.append(
            {
                "name": name,
                "family": family_of(model).name,
                "input_size": int(cfg.input_size[-1]) if cfg else None,
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                "license": spec.license if spec.offline else (cfg.license if cfg else None),
                "offline": spec.offline,
                "why": why,
            }
        )
    defaults = {
        f: {**FAMILY_DEFAULTS[f], "bn_policy": "freeze" if FAMILIES[f].batchnorm else None}
        for f in FAMILY_DEFAULTS
    }
    if as_json:
        print_json({"recommended": rows, "finetune_defaults": defaults})
        return
    from rich.table import Table

    table = Table(title="recommended backbones to transfer from")
    for col in ("name", "family", "input", "params", "licence", "here", "why"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            f"{r['input_size']} px",
            f"{r['params_m']}M",
            str(r["license"]),
            "offline" if r["offline"] else "hub (internet)",
            r["why"],
        )
    out.print(table)
    fam = Table(title="fine-tuning defaults per family (transferlab finetune)")
    for col in ("family", "examples", "--lr", "--layer-decay", "--bn"):
        fam.add_column(col, overflow="fold")
    for f, d in defaults.items():
        fam.add_row(
            f,
            FAMILIES[f].examples,
            f"{d['lr']:g}",
            str(d["layer_decay"]),
            d["bn_policy"] or "(no BatchNorm)",
        )
    out.print(fam)
    out.print(
        "Hub backbones need internet on first use (timm caches them); without it, "
        "--weights random or --weights FILE loads the architecture.",
        markup=False,
    )
