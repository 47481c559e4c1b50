"""`transferlab finetune`: fine-tune a pretrained backbone, fastai style, with checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from transferlab.cli._common import (
    BackboneOpt,
    DeviceOpt,
    MaxPixelsOpt,
    SeedOpt,
    StrictOpt,
    ValFractionOpt,
    WeightsOpt,
    WorkersOpt,
    app,
    handle_errors,
    out,
    print_json,
)

if TYPE_CHECKING:
    from transferlab.finetune import FinetuneConfig
    from transferlab.pipeline import FitResult


@app.command("finetune")
@handle_errors
def finetune_cmd(
    data: Path = typer.Argument(
        ..., help="Folder with train/ and val/, a folder of class folders, or a CSV (path,label)."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (default: runs/finetune-<data>-<time>)."
    ),
    backbone: str = BackboneOpt,
    weights: str = WeightsOpt,
    epochs: int = typer.Option(
        5, "--epochs", min=0, help="Epochs with the whole network unfrozen."
    ),
    freeze_epochs: int = typer.Option(
        0,
        "--freeze-epochs",
        min=0,
        help="Epochs training only the head first (its start is the probe).",
    ),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate of the head (one-cycle)."),
    lr_mult: float = typer.Option(
        100.0, "--lr-mult", help="Head LR / stem LR when unfrozen (discriminative LRs)."
    ),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing"),
    mixup: float = typer.Option(
        0.0, "--mixup", help="MixUp Beta(alpha, alpha): blend image pairs and labels (0: off)."
    ),
    ema: float | None = typer.Option(
        None,
        "--ema",
        help="Average the weights (EMA with this decay, e.g. 0.998) and keep the average.",
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    bn_policy: str = typer.Option(
        "freeze", "--bn", help="BatchNorm statistics: 'freeze' (keep pretrained) or 'train'."
    ),
    head_init: str = typer.Option(
        "probe", "--head-init", help="'probe' (start from the linear probe) or 'random'."
    ),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="Random-resized crop, flip, colour jitter."
    ),
    tta: bool = typer.Option(False, "--tta", help="Average predictions with the mirrored image."),
    crop_scale: float = typer.Option(
        0.35, "--crop-scale", help="Smallest image-area share a random crop keeps."
    ),
    jitter: float = typer.Option(
        0.2,
        "--jitter",
        help="Colour-jitter strength (brightness/contrast vary by up to this share; 0: off).",
    ),
    wise: str = typer.Option(
        "auto",
        "--wise",
        help="WiSE-FT blend of start and end weights: auto, off, or alpha in (0, 1].",
    ),
    balance: str | None = typer.Option(
        None, "--balance", help="Class imbalance: 'weights' (weighted loss) or 'sampler'."
    ),
    early_stopping: int | None = typer.Option(
        None, "--early-stopping", min=1, help="Stop after N epochs without improvement."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", min=32, help="Input size (default: the backbone's)."
    ),
    adapt_bn: bool = typer.Option(
        False,
        "--adapt-bn",
        help="Re-estimate BatchNorm statistics on the training images first (AdaBN): for data "
        "far from photos, e.g. x-rays (see `transferlab diagnose`).",
    ),
    freeze_to: int = typer.Option(
        0,
        "--freeze-to",
        help="Layer group the unfrozen phase trains from (0: all; 2: keep stem and first stage "
        "frozen; negative: from the end).",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (bf16 autocast where the hardware does bf16 natively: recent GPUs, CPUs with "
        "AVX-512-BF16/AMX; fp32 elsewhere), fp32, or bf16.",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted run in --out from its last completed epoch.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the files of an earlier run in --out."
    ),
    val_fraction: float = ValFractionOpt,
    seed: int = SeedOpt,
    strict: bool = StrictOpt,
    workers: int | None = WorkersOpt,
    device: str = DeviceOpt,
    max_pixels: int = MaxPixelsOpt,
    multi_label: bool = typer.Option(
        False,
        "--multi-label",
        help="CSV labels hold several ';'-separated labels (sigmoid head, BCE).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print metrics.json instead of the summary."
    ),
    nproc: int | None = typer.Option(
        None,
        "--nproc",
        min=1,
        help="Data-parallel processes on this machine (DDP, started through torchrun): one per "
        "GPU, or CPU processes. --batch-size is per process. For several machines run torchrun "
        "yourself: torchrun --nproc_per_node N ... -m transferlab finetune DATA --out DIR.",
    ),
) -> None:
    """Fine-tune: head first (body frozen), then all layers with discriminative learning rates.

    Writes OUT/metrics.json, OUT/report.html, OUT/training_curves.png, OUT/checkpoints/ and OUT/model/
    (which `transferlab predict` loads). Compares against the linear probe on the same images.

    Examples:
      transferlab finetune ../shared/datasets/hymenoptera --out runs/hym-ft --epochs 4
      transferlab finetune data/ --out runs/ft --resume          # after Ctrl-C
      transferlab finetune data/ --out runs/ft --nproc 4         # 4 GPUs, DDP
      torchrun --nproc_per_node 4 -m transferlab finetune data/ --out runs/ft
    """
    from transferlab.cli.fit import default_run_dir, print_fit_summary
    from transferlab.distributed import ddp as _ddp
    from transferlab.finetune import FinetuneConfig
    from transferlab.pipeline import finetune

    if resume and out_dir is None:
        from transferlab.exceptions import InvalidParameterError

        raise InvalidParameterError(
            "--resume needs --out: the run directory holding checkpoints/last.pt"
        )
    config = FinetuneConfig(
        backbone=backbone,
        weights=weights,
        epochs=epochs,
        freeze_epochs=freeze_epochs,
        lr=lr,
        lr_mult=lr_mult,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        mixup=mixup,
        ema=ema,
        batch_size=batch_size,
        bn_policy=bn_policy,
        head_init=head_init,
        augment=augment,
        tta=tta,
        crop_scale=crop_scale,
        jitter=jitter,
        wise=wise if wise in ("auto", "off") else _alpha(wise),
        class_balance=balance,
        early_stopping=early_stopping,
        image_size=image_size,
        adapt_bn=adapt_bn,
        freeze_to=freeze_to,
        precision=precision,
        seed=seed,
        num_workers=workers,
        device=device,
        max_pixels=max_pixels,
    )
    kwargs = {
        "val_fraction": val_fraction,
        "strict": strict,
        "resume": resume,
        "overwrite": overwrite,
        "multi_label": multi_label,
    }
    if nproc is not None and nproc > 1:
        result = _launch(data, out_dir or default_run_dir(data, "finetune"), config, nproc, kwargs)
    else:
        # under torchrun (`-m transferlab.finetune`): one process of the group; else plain
        with _ddp.distributed_session(device):
            run_dir = _ddp.on_main(lambda: out_dir or default_run_dir(data, "finetune"))
            result = finetune(data, run_dir, config, **kwargs)
            if not _ddp.is_main_process():
                return
    if as_json:
        print_json(result.metrics)
        return
    print_fit_summary(result)
    if "advice" in result.metrics:
        out.print(f"  {result.metrics['advice']}")


def _alpha(text: str) -> float:
    from transferlab.exceptions import InvalidParameterError

    try:
        return float(text)
    except ValueError:
        raise InvalidParameterError(
            f"--wise must be auto, off or a number in (0, 1], got {text!r}"
        ) from None


def _launch(
    data: Path, out_dir: Path, config: FinetuneConfig, nproc: int, kwargs: dict[str, Any]
) -> FitResult:
    """`--nproc N`: check what can be checked here (one clear error, not one per process), run
    torchrun's agent with N workers, and read back the metrics rank 0 wrote."""
    import json
    from dataclasses import asdict

    import torch

    from transferlab._internal.rundir import prepare_out as _prepare_out
    from transferlab.backbones import resolve_device
    from transferlab.data import load_dataset
    from transferlab.distributed import ddp as _ddp
    from transferlab.exceptions import InvalidParameterError
    from transferlab.pipeline import FitResult, launch_finetune

    if _ddp.launched_by_torchrun():
        raise InvalidParameterError(
            "--nproc starts torchrun itself; this process already runs under torchrun "
            "(RANK/WORLD_SIZE are set): leave --nproc out"
        )
    dev = resolve_device(config.device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise InvalidParameterError(
                f"--nproc {nproc} with --device {config.device}: each process takes its own GPU; "
                "pass --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        if nproc > torch.cuda.device_count():
            raise InvalidParameterError(
                f"--nproc {nproc} needs {nproc} GPUs, {torch.cuda.device_count()} visible; "
                "lower --nproc or use --device cpu"
            )
    load_dataset(
        data,
        val_fraction=kwargs["val_fraction"],
        seed=config.seed,
        multi_label=kwargs["multi_label"],
    )
    if kwargs["resume"]:
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        _prepare_out(out_dir, kwargs["overwrite"])
    job = {"data": str(data), "out": str(out_dir), "config": asdict(config), **kwargs}
    launch_finetune(nproc, job)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    skipped = [(s["path"], s["reason"]) for s in metrics.get("skipped", [])]
    return FitResult(
        metrics,
        out_dir,
        out_dir / "model",
        out_dir / "report.html",
        out_dir / "confusion_matrix.png" if not metrics.get("multi_label") else None,
        skipped,
    )
