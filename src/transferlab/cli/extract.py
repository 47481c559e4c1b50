"""`transferlab extract`: images -> feature vectors in a .npz or .parquet file, or (``--engine ray``)
a folder of Parquet shards written by a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, out, print_failures, print_int8


@command("extract")
def extract_cmd(
    data: str = typer.Argument(
        ...,
        help="Dataset folder/CSV, or a folder of unlabelled images. With --engine ray also a "
        ".parquet listing or an fsspec URL (s3://bucket/photos/).",
    ),
    out_file: Path = typer.Option(
        ..., "--out", "-o", help="Output file: .npz or .parquet; with --engine ray, a folder."
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    layer: opt.Layer = "pre_logits",
    pool: opt.Pool = "avg",
    weights: opt.Weights = "default",
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Images per forward pass (default: 32 on CPU, 256 on GPU).",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (fp32 on CPU; bf16 autocast on a GPU that supports it; fp32 with --engine "
        "ray), fp32, bf16, or int8 (the ONNX export statically quantised on CPU, calibrated on "
        "the training images; its fidelity to fp32 is measured and printed).",
    ),
    workers: opt.Workers = None,
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    max_pixels: opt.MaxPixels = 89_478_485,
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="auto (ONNX Runtime on CPU when installed and there are enough images to repay the "
        "one-off export, else PyTorch), torch, or onnx (exported once into the cache folder; "
        "same vectors within 1e-4), or ray (a Ray Data pipeline on a Ray cluster writing resumable "
        "Parquet shards into the --out folder, PyTorch in each actor; pip install 'transferlab[ray]').",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="--engine ray: cluster to join ('auto', 'ray://host:10001'); default $RAY_ADDRESS, "
        "else a local cluster for this run.",
    ),
    ray_workers: int | None = typer.Option(
        None,
        "--ray-workers",
        min=1,
        help="--engine ray: model actors (default: one per GPU, else one per CPU).",
    ),
    shard_size: int = typer.Option(
        128, "--shard-size", min=1, help="--engine ray: images per Parquet shard (unit of resume)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="--engine ray: replace shards of a different extraction."
    ),
    strict: opt.Strict = False,
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
) -> None:
    """Extract feature vectors (one row per image) with paths, labels and splits.

    Examples:
      transferlab extract ../shared/datasets/hymenoptera --out feats.npz
      transferlab extract photos/ --layer stage5 --pool max --out feats.parquet
      transferlab extract s3://bucket/photos/ --engine ray --address auto --out feats/

    With --engine ray, running the same command again computes only the missing shards.
    """
    # the model, the same for both engines
    model = {"backbone": backbone, "layer": layer, "pool": pool, "weights": weights}
    on_error = "raise" if strict else "skip"
    if engine == "ray":
        _extract_ray(
            data,
            out_file,
            **model,
            batch_size=batch_size,
            shard_size=shard_size,
            workers=ray_workers,
            device=device,
            # Ray shards default to fp32 whatever runs them, so a resumed run stays one extraction
            precision="fp32" if precision == "auto" else precision,
            address=address,
            max_pixels=max_pixels,
            on_error=on_error,
            overwrite=overwrite,
            val_fraction=val_fraction,
            seed=seed,
        )
        return
    from transferlab.data import collect_images
    from transferlab.exceptions import InvalidParameterError
    from transferlab.features import FeatureExtractor, cache_setting, save_features

    suffix = out_file.suffix.lower()
    if suffix not in (".npz", ".parquet"):
        raise InvalidParameterError(f"--out must end in .npz or .parquet, got {out_file.name!r}")
    samples, splits = collect_images(data, val_fraction=val_fraction, seed=seed)
    # int8 calibrates on the training split (all images where the folder has no split)
    train = [s.path for s, sp in zip(samples, splits, strict=True) if sp == "train"]
    fx = FeatureExtractor(
        **model,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        cache=cache_setting(cache_dir, no_cache),
        max_pixels=max_pixels,
        engine=engine,
        precision=precision,
        calibration=(train or [s.path for s in samples]) if precision == "int8" else None,
    )
    res = fx.extract([s.path for s in samples], on_error=on_error)
    kept = [samples[i] for i in res.index]
    save_features(
        out_file,
        res.features[layer],
        [s.path for s in kept],
        [s.label for s in kept],
        [splits[i] for i in res.index],
        meta={
            "backbone": backbone,
            "layer": layer,
            "pool": pool,
            "weights_sha256": fx.card_.weights_sha256,
        },
    )
    print_failures(res.failures)
    print_int8(fx)
    X = res.features[layer]
    out.print(
        f"wrote {X.shape[0]} vectors of {X.shape[1] if X.ndim == 2 else 0} floats to {out_file} "
        f"({res.n_cached} from cache, {len(res.failures)} skipped, {res.seconds:.1f} s, "
        f"computed by {res.engine})"
    )


def _extract_ray(data: str, out_dir: Path, **kwargs: Any) -> None:
    from transferlab.exceptions import InvalidParameterError
    from transferlab.features.ray import extract_with_ray

    if out_dir.suffix.lower() in (".npz", ".parquet") and not out_dir.is_dir():
        raise InvalidParameterError(
            f"with --engine ray, --out is a folder of Parquet shards, got {out_dir.name!r}; "
            f"e.g. --out {out_dir.with_suffix('')}/"
        )
    res = extract_with_ray(data, out_dir, **kwargs)
    print_failures(res.failures)
    out.print(
        f"wrote {res.n_rows} vectors of {res.dim} floats in {res.n_shards} shards to {out_dir} "
        f"({len(res.shards_computed)} shards computed by {res.workers} workers, "
        f"{len(res.shards_skipped)} already done, {len(res.failures)} images skipped, "
        f"{res.seconds:.1f} s)"
    )
