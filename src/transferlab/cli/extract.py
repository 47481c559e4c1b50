"""`transferlab extract`: images -> feature vectors in a .npz or .parquet file."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli._common import (
    BackboneOpt,
    BatchOpt,
    CacheDirOpt,
    DeviceOpt,
    LayerOpt,
    MaxPixelsOpt,
    NoCacheOpt,
    PoolOpt,
    SeedOpt,
    StrictOpt,
    ValFractionOpt,
    WeightsOpt,
    WorkersOpt,
    app,
    err,
    handle_errors,
    out,
)


@app.command("extract")
@handle_errors
def extract_cmd(
    data: Path = typer.Argument(..., help="Dataset folder/CSV, or a folder of unlabelled images."),
    out_file: Path = typer.Option(..., "--out", "-o", help="Output file: .npz or .parquet."),
    backbone: str = BackboneOpt,
    layer: str = LayerOpt,
    pool: str = PoolOpt,
    weights: str = WeightsOpt,
    batch_size: int = BatchOpt,
    workers: int | None = WorkersOpt,
    device: str = DeviceOpt,
    cache_dir: Path | None = CacheDirOpt,
    no_cache: bool = NoCacheOpt,
    max_pixels: int = MaxPixelsOpt,
    engine: str = typer.Option(
        "torch",
        "--engine",
        help="torch, or onnx (ONNX Runtime on CPU; exported once into the cache folder; same "
        "vectors within 1e-4).",
    ),
    strict: bool = StrictOpt,
    val_fraction: float = ValFractionOpt,
    seed: int = SeedOpt,
) -> None:
    """Extract feature vectors (one row per image) with paths, labels and splits.

    Examples:
      transferlab extract ../shared/datasets/hymenoptera --out feats.npz
      transferlab extract photos/ --layer stage5 --pool max --out feats.parquet
    """
    from transferlab.data import collect_images
    from transferlab.exceptions import InvalidParameterError
    from transferlab.features import FeatureExtractor, save_features

    suffix = out_file.suffix.lower()
    if suffix not in (".npz", ".parquet"):
        raise InvalidParameterError(f"--out must end in .npz or .parquet, got {out_file.name!r}")
    samples, splits = collect_images(data, val_fraction=val_fraction, seed=seed)
    fx = FeatureExtractor(
        backbone,
        layer=layer,
        pool=pool,
        weights=weights,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        cache=False if no_cache else (cache_dir or True),
        max_pixels=max_pixels,
        engine=engine,
    )
    res = fx.extract([s.path for s in samples], on_error="raise" if strict else "skip")
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
            "weights_sha256": fx.backbone_.weights_sha256,
        },
    )
    for f in res.failures:
        err.print(f"skipped {f.path}: {f.reason}", markup=False)
    X = res.features[layer]
    out.print(
        f"wrote {X.shape[0]} vectors of {X.shape[1] if X.ndim == 2 else 0} floats to {out_file} "
        f"({res.n_cached} from cache, {len(res.failures)} skipped, {res.seconds:.1f} s)"
    )
