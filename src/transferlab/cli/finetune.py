"""`transferlab finetune`: fine-tune a pretrained backbone, fastai style, with checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import (
    command,
    config_from,
    default_run_dir,
    out,
    print_fit_summary,
    print_json,
)


@command("finetune")
def finetune_cmd(
    data: opt.TrainData,
    out_dir: Path | None = opt.run_out("finetune"),
    backbone: opt.Backbone = "efficientnet_lite0",
    weights: opt.Weights = "default",
    epochs: int = typer.Option(
        5, "--epochs", min=0, help="Epochs with the whole network unfrozen."
    ),
    freeze_epochs: int = typer.Option(
        0,
        "--freeze-epochs",
        min=0,
        help="Epochs training only the head first (its start is the probe).",
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate of the head (one-cycle; default: the backbone family's, "
        "5e-4 for CNNs with BatchNorm, 2e-4 ConvNeXt, 1e-4 transformers: see `transferlab "
        "backbones --recommended`).",
    ),
    lr_mult: float = typer.Option(
        100.0,
        "--lr-mult",
        help="Head LR / stem LR when unfrozen (discriminative LRs), when --layer-decay is off.",
    ),
    layer_decay: str | None = typer.Option(
        None,
        "--layer-decay",
        help="Layer-wise LR decay per block, e.g. 0.75 (BEiT/timm), or 'off' for the --lr-mult "
        "spread (default: the family's, 0.75 transformers, 0.8 ConvNeXt, off for BatchNorm CNNs).",
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
    batch_size: opt.TrainBatchSize = 16,
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
    style: float = typer.Option(
        0.0,
        "--style",
        help="Share of training images drawn as line drawings or greyscale (the style remedy "
        "for drawing/greyscale targets; --remedy style sets 0.5).",
    ),
    target: opt.Target = None,
    remedy: str = typer.Option(
        "auto",
        "--remedy",
        help="auto (with --target: the style remedy when the target is colourless), none, "
        "or style. CORAL and self-training are probe remedies: transferlab fit.",
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
    overwrite: opt.OverwriteRun = False,
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    strict: opt.Strict = False,
    workers: opt.Workers = None,
    device: opt.Device = "auto",
    max_pixels: opt.MaxPixels = 89_478_485,
    multi_label: bool = typer.Option(
        False,
        "--multi-label",
        help="CSV labels hold several ';'-separated labels (sigmoid head, BCE).",
    ),
    as_json: opt.MetricsJson = False,
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
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.distributed import ddp as _ddp
    from transferlab.finetune import FinetuneConfig
    from transferlab.pipeline import FinetuneRunConfig, run_finetune, run_finetune_nproc

    if resume and out_dir is None:
        from transferlab.exceptions import InvalidParameterError

        raise InvalidParameterError(
            "--resume needs --out: the run directory holding checkpoints/last.pt"
        )
    config = config_from(
        FinetuneConfig,
        params,
        wise=wise if wise in ("auto", "off") else _alpha(wise),
        layer_decay=_decay(layer_decay),
        class_balance=balance,
        num_workers=workers,
    )

    def run_config(run_dir: Path) -> FinetuneRunConfig:
        return config_from(
            FinetuneRunConfig,
            params,
            out=run_dir,
            finetune=config,
            target=str(target) if target else None,
        )

    if nproc is not None and nproc > 1:
        # checks what it can here (one clear error, not one per process), loads the data and
        # prepares --out once, then starts torchrun's agent with N workers
        result = run_finetune_nproc(run_config(out_dir or default_run_dir(data, "finetune")), nproc)
    else:
        # under torchrun (`torchrun ... -m transferlab finetune`): one process of the group; else plain
        with _ddp.distributed_session(device):
            run_dir = _ddp.on_main(lambda: out_dir or default_run_dir(data, "finetune"))
            result = run_finetune(run_config(run_dir))
            if not _ddp.is_main_process():
                return
    if as_json:
        print_json(result.metrics)
        return
    print_fit_summary(result)
    if "advice" in result.metrics:
        out.print(f"  {result.metrics['advice']}")


def _decay(text: str | None) -> float | str | None:
    from transferlab.exceptions import InvalidParameterError

    if text is None or text == "off":
        return text
    try:
        return float(text)
    except ValueError:
        raise InvalidParameterError(
            f"--layer-decay must be off or a number in (0, 1], got {text!r}"
        ) from None


def _alpha(text: str) -> float:
    from transferlab.exceptions import InvalidParameterError

    try:
        return float(text)
    except ValueError:
        raise InvalidParameterError(
            f"--wise must be auto, off or a number in (0, 1], got {text!r}"
        ) from None
