"""Outliers found (issue 19): inject 4 training images from each of three other datasets into a
dataset's train + val images and count how many `diagnose.outliers` flags (mean cosine
distance to the k nearest images above Q3 + 1.5 IQR), against how many of the dataset's own
images it flags, for k = 5 and k = 10 and lite0 vs the three packaged backbones concatenated.

    python benchmarks/bench_outliers.py [--data hymenoptera trashnet aid_rs10] [--seed 0]

Features come from the default feature cache (the first run extracts them).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from bench_int8 import DATASETS, cpu_flags

from transferlab.data import load_dataset
from transferlab.diagnose import outliers
from transferlab.features import FeatureExtractor

ALL = ("hymenoptera", "trashnet", "aid_rs10", "pneumoniamnist")
ALL3 = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["hymenoptera", "trashnet", "aid_rs10"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    rng = np.random.default_rng(args.seed)
    for name in args.data:
        if not all((DATASETS / d).is_dir() for d in ALL):
            print(f"\n{name}: skipped, needs {', '.join(ALL)} under {DATASETS}")
            return
        ds = load_dataset(DATASETS / name)
        base = [s.path for s in ds.train + ds.val]
        injected = []
        for other in (d for d in ALL if d != name):
            if len(injected) == 12:
                break
            pool = [s.path for s in load_dataset(DATASETS / other).train]
            injected += [str(p) for p in rng.choice(pool, 4, replace=False)]
        paths = base + injected
        feats = {
            b: unit(FeatureExtractor(b, layer="pre_logits", progress=False).fit().transform(paths))
            for b in ALL3
        }
        n = len(base)
        print(f"\n{name}: {n} images + {len(injected)} injected from other datasets")
        print(f"  {'features':10s} {'k':>3s} | injected flagged | own images flagged")
        for label, X in (("lite0", feats[ALL3[0]]), ("lite0+1+2", np.hstack(list(feats.values())))):
            for k in (5, 10):
                o = outliers(X, k=k)
                flagged = set(o.flagged)
                bad = sum(1 for i in range(n, len(paths)) if i in flagged)
                own = sum(1 for i in range(n) if i in flagged)
                print(f"  {label:10s} {k:3d} | {bad:7d} of {len(injected):<6d} | {own:5d} of {n}")


if __name__ == "__main__":
    main()
