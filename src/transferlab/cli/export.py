"""`transferlab export`: a saved model as ONNX plus its preprocessing."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, out


@command("export")
def export_cmd(
    model_dir: opt.ModelDir,
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: MODEL_DIR/export-onnx)."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
) -> None:
    """Export to ONNX (image tensor in, probabilities out) with preprocessing.json beside it.

    Example:
      transferlab export runs/hym-ft/model --format onnx --out runs/hym-ft/onnx
    """
    from transferlab.exceptions import InvalidParameterError
    from transferlab.models import load_model
    from transferlab.models.export import EXPORT_FORMATS, export_onnx

    if fmt not in EXPORT_FORMATS:
        raise InvalidParameterError(
            f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}"
        )
    model = load_model(model_dir, device="cpu", progress=False)
    res = export_onnx(model, out_dir or model_dir / f"export-{fmt}", opset=opset)
    out.print(f"wrote {res['onnx']} and {res['preprocessing']}")
    if "max_abs_diff" in res:
        out.print(
            f"onnxruntime vs PyTorch: max |difference| of probabilities {res['max_abs_diff']:.2e}"
        )
