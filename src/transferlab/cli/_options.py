"""Options that several commands share, declared once so that their flags and help agree.

Each alias is `Annotated[type, typer.Option(...)]`; a command gives the default, as typer wants:
`backbone: opt.Backbone = "efficientnet_lite0"`. Options only one command has stay inline there.
Commands import this module as `opt` (one import line, not a list of names per command).
`run_out` is a default rather than an alias: its help names the command's default run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

# Inputs
TrainData = Annotated[
    Path,
    typer.Argument(
        help="Folder with train/ and val/, a folder of class folders, or a CSV (path,label)."
    ),
]
LabelledData = Annotated[Path, typer.Argument(help="Labelled images (same forms as `fit`).")]
ModelDir = Annotated[
    Path, typer.Argument(help="Model directory from `fit` or `finetune` (OUT/model).")
]

# The model and its features
Backbone = Annotated[
    str, typer.Option("--backbone", "-b", help="Backbone name (see `transferlab backbones`).")
]
Layer = Annotated[
    str, typer.Option("--layer", "-l", help="Layer tap: stem, stageN, pre_logits or logits.")
]
Pool = Annotated[
    str,
    typer.Option(
        "--pool",
        help="Pooling of spatial layers and tokens: avg, max, avgmax; for transformers also token (class token), patch (mean of patch tokens), token_patch (both).",
    ),
]
Weights = Annotated[
    str,
    typer.Option(
        "--weights",
        help="'default' (packaged or hub), 'hub', 'random', or a .pth/.safetensors file.",
    ),
]

# Running
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
TrainBatchSize = Annotated[int, typer.Option("--batch-size", min=1)]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers", min=0, help="Decoding processes (default: chosen from cores and input size)."
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Feature precision: auto (fp32 on CPU; bf16 on a GPU that supports it), fp32, bf16, "
        "or int8 (CPU: the ONNX export statically quantised, calibrated on the training images; "
        "its fidelity to fp32 is measured and reported; opt-in, see benchmarks/RESULTS.md).",
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Feature cache folder (default: $TRANSFERLAB_CACHE_DIR or the user cache dir).",
    ),
]
NoCache = Annotated[
    bool, typer.Option("--no-cache", help="Do not read or write the feature cache.")
]
MaxPixels = Annotated[
    int, typer.Option("--max-pixels", min=1, help="Refuse larger images (decompression bombs).")
]
Strict = Annotated[
    bool, typer.Option("--strict", help="Fail on the first broken image instead of skipping it.")
]

# The data split
ValFraction = Annotated[
    float, typer.Option("--val-fraction", help="Validation share when the data has no val/ split.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the split and the solvers.")]
MaxImages = Annotated[
    int,
    typer.Option("--max-images", min=8, help="Labelled images used at most (stratified draw)."),
]


# Outputs
def run_out(command: str, what: str = "Run directory") -> Any:
    """``--out/-o`` of a run that goes to `default_run_dir` without it (the help names that)."""
    return typer.Option(
        None, "--out", "-o", help=f"{what} (default: runs/{command}-<data>-<time>)."
    )


Overwrite = Annotated[bool, typer.Option("--overwrite")]
OverwriteRun = Annotated[
    bool, typer.Option("--overwrite", help="Replace the files of an earlier run in --out.")
]
MetricsJson = Annotated[
    bool, typer.Option("--json", help="Print metrics.json instead of the summary.")
]
Json = Annotated[bool, typer.Option("--json")]
Target = Annotated[
    Path | None,
    typer.Option(
        "--target",
        help="Folder of unlabelled images from the domain the model will be asked about "
        "(e.g. sketches when training on photos): read by --remedy. Labels are never used.",
    ),
]
Remedy = Annotated[
    str,
    typer.Option(
        "--remedy",
        help="Closing a train -> target domain gap: auto (with --target, the remedy measured "
        "best for the shift found), none, style (also train on line/greyscale renderings; no "
        "target needed), coral or self-train (learn from the unlabelled --target images).",
    ),
]
