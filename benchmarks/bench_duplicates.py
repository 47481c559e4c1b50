"""Where the near-duplicate threshold belongs (issue 19): the cosine similarity of pre_logits
features between an image and its altered copy (JPEG at quality 70, half size, a 90% centre
crop) against that between each image and its most similar *other* image of the dataset.

    python benchmarks/bench_duplicates.py [--data hymenoptera trashnet] [--n 40]

Prints, per dataset, the similarity quantiles of copies and of distinct nearest neighbours, and
at each candidate threshold the share of copies found and the distinct images flagged, side by
side. Exact duplicates (same pixels) are left out of the distinct pairs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_int8 import DATASETS, cpu_flags

from transferlab.data import load_dataset, load_image
from transferlab.diagnose import (
    NEAR_DUPLICATE_SIMILARITY,
    THUMBNAIL_SIMILARITY,
    exact_duplicates,
    thumbnails,
)
from transferlab.features import FeatureExtractor

THRESHOLDS = (0.85, 0.90, 0.93, 0.95, 0.97, 0.99)
ALTERATIONS = {
    "jpeg q70": lambda im: im,  # saved below as JPEG quality 70
    "half size": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2))),
    "crop 90%": lambda im: im.crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)
    ),
}


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def report(X: np.ndarray, C: np.ndarray, of: list[int], copies: list, skip: list) -> None:
    """Copies' similarity to their originals vs distinct nearest neighbours', and per threshold."""
    copy_sim = np.einsum("ij,ij->i", C, X[of])
    S = X @ X.T
    np.fill_diagonal(S, -1.0)
    for ks in skip:  # same pixels: not a distinct pair
        for a in ks:
            S[a, ks] = -1.0
    nn_sim = S.max(axis=1)
    for kind in ALTERATIONS:
        s = copy_sim[[k for k, (c, _) in enumerate(copies) if c == kind]]
        print(f"  copy {kind:10s} similarity to its original: min {s.min():.3f}  "
              f"1% {np.quantile(s, 0.01):.3f}  median {np.median(s):.3f}")  # fmt: skip
    print("  distinct nearest neighbour: " + "  ".join(
        f"{int(p * 100)}% {np.quantile(nn_sim, 1 - p):.3f}" if p else f"max {nn_sim.max():.3f}"
        for p in (0, 0.01, 0.5)))  # fmt: skip
    print(f"  {'threshold':>9s} | copies found | distinct images flagged")
    for t in THRESHOLDS:
        print(f"  {t:9.2f} | {(copy_sim >= t).mean():12.3f} | {(nn_sim >= t).sum():5d} of "
              f"{len(X)}")  # fmt: skip


def one(name: str, n: int, backbone: str, tmp: Path) -> None:
    ds = load_dataset(DATASETS / name)
    samples = list(ds.train) + list(ds.val)
    paths = [s.path for s in samples]
    rng = np.random.default_rng(0)
    picked = sorted(rng.choice(len(paths), min(n, len(paths)), replace=False))
    copies, of = [], []
    for i in picked:
        img = load_image(paths[i])
        for kind, alter in ALTERATIONS.items():
            out = tmp / f"{name}_{i}_{kind.replace(' ', '_').replace('%', '')}.jpg"
            alter(img).save(out, quality=70 if kind == "jpeg q70" else 95)
            copies.append((kind, str(out)))
            of.append(i)
    groups, _ = exact_duplicates({"all": samples})
    index = {p: k for k, p in enumerate(paths)}
    skip = [[index[p] for p in g.paths] for g in groups]
    fx = FeatureExtractor(backbone, layer="pre_logits", cache=False, progress=False).fit()
    t = time.perf_counter()
    X = unit(fx.transform(paths))
    C = unit(fx.transform([p for _, p in copies]))
    print(f"\n{name}: {len(paths)} images (train + val), {len(picked)} altered x "
          f"{len(ALTERATIONS)}; {backbone}/pre_logits features ({time.perf_counter() - t:.0f} s; "
          f"default threshold {NEAR_DUPLICATE_SIMILARITY}):")  # fmt: skip
    report(X, C, of, copies, skip)
    t = time.perf_counter()
    (Xt, _), (Ct, _) = thumbnails(paths), thumbnails([p for _, p in copies])
    print(f"  -- 16 x 16 greyscale thumbnails, mean removed ({time.perf_counter() - t:.0f} s; "
          f"default threshold {THUMBNAIL_SIMILARITY}):")  # fmt: skip
    report(Xt, Ct, of, copies, skip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["hymenoptera", "trashnet"])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            if not (DATASETS / name).is_dir():
                print(f"\n{name}: skipped, not found at {DATASETS / name}")
                continue
            one(name, args.n, args.backbone, Path(tmp))


if __name__ == "__main__":
    main()
