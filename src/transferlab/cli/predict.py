"""`transferlab predict`: a saved model's labels and probabilities for new images."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, out, print_json


@command("predict")
def predict_cmd(
    model_dir: Path = typer.Argument(
        ..., help="Model directory written by `transferlab fit` (OUT/model)."
    ),
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    top_k: int = typer.Option(
        1, "--top-k", "-k", min=1, help="How many classes to show per image."
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        help="Below this (calibrated) probability, say 'uncertain' instead of guessing.",
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON output, one object per image."),
    device: opt.Device = "auto",
) -> None:
    """Predict labels with probabilities. Broken images are reported, not fatal (exit 1 if any).

    Examples:
      transferlab predict runs/hymenoptera/model photo.jpg --top-k 2
      transferlab predict runs/hymenoptera/model new_photos/ --json
    """
    from rich.markup import escape

    from transferlab.data import list_images
    from transferlab.exceptions import DatasetError
    from transferlab.models import load_model

    paths: list[str] = []
    for p in images:
        if p.is_dir():
            found, _ = list_images(p)
            if not found:
                raise DatasetError(f"{p} holds no image files")
            paths.extend(found)
        else:
            paths.append(str(p))
    model = load_model(model_dir, device=device)
    if threshold is not None and not 0 < threshold < 1:
        from transferlab.exceptions import InvalidParameterError

        raise InvalidParameterError(f"--threshold must be between 0 and 1, got {threshold}")
    preds = model.predict_paths(paths, top_k=top_k, threshold=threshold)
    if as_json:
        print_json([p.to_dict() for p in preds])
    else:
        for p in preds:
            if p.error:
                out.print(f"{escape(p.path)}\t[red]error: {escape(p.error)}[/]")
            else:
                tops = "  ".join(f"{c} {prob:.3f}" for c, prob in p.top)
                if p.labels is not None:
                    out.print(
                        f"{p.path}\t[{', '.join(p.labels) or 'no label'}]\t{tops}", markup=False
                    )
                else:
                    out.print(f"{p.path}\t{tops}", markup=False)
    if any(p.error for p in preds):
        raise typer.Exit(1)
