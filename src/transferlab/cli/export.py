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
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: also write model-int8.onnx, statically quantised and calibrated on your "
        "training images, with its measured fidelity to fp32 in preprocessing.json.",
    ),
    calibration: str | None = typer.Option(
        None,
        "--calibration",
        help="--quantize: dataset folder/CSV whose train split calibrates (default: the "
        "training images a probe model recorded).",
    ),
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
    paths = None
    if calibration is not None:
        from transferlab.data import load_dataset

        paths = [s.path for s in load_dataset(calibration).train]
    model = load_model(model_dir, device="cpu", progress=False)
    res = export_onnx(
        model,
        out_dir or model_dir / f"export-{fmt}",
        opset=opset,
        quantize=quantize,
        calibration=paths,
    )
    out.print(f"wrote {res['onnx']} and {res['preprocessing']}")
    if "int8" in res:
        q = res["int8"]
        out.print(
            f"wrote {res['onnx_int8']}: top-1 agreement with fp32 {q['top1_agreement_with_fp32']:.4f}, "
            f"probability cosine {q['probability_cosine_to_fp32']:.4f} on {q['fidelity_images']} "
            f"training images {q['fidelity_measured_on']} (calibrated on {q['calibration_images']})"
        )
    if "max_abs_diff" in res:
        out.print(
            f"onnxruntime vs PyTorch: max |difference| of probabilities {res['max_abs_diff']:.2e}"
        )
