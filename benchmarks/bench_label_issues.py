"""Likely label errors found (issue 19): flip 10% of the training labels at random (seeded) and
count how many of the flipped images `diagnose.label_issues` puts in its top k (k = the number
flipped), per feature set, side by side; with no label flipped, how many it flags.

    python benchmarks/bench_label_issues.py [--data hymenoptera trashnet] [--seeds 0 1 2]
        [--per-class 10 20 0]

`--per-class n` draws n training images per class (seeded) before flipping: 0 is all of them.

Features come from the default feature cache (the first run extracts them).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from bench_int8 import DATASETS, cpu_flags

from transferlab.data import load_dataset
from transferlab.diagnose import LABEL_ISSUE_C_TIMES_N, label_issues
from transferlab.features import FeatureExtractor

ALL3 = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SETS = {  # label -> (backbones, C; None: the default rule, min(1, 60 / n))
    "lite0, C=1": (("efficientnet_lite0",), 1.0),
    "lite0+1+2, C=1": (ALL3, 1.0),
    "lite0+1+2, C=0.1": (ALL3, 0.1),
    f"lite0+1+2, C=min(1,{LABEL_ISSUE_C_TIMES_N:g}/n) (default)": (ALL3, None),
}


def flipped(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`y` with 10% of its labels moved to another class at random, and their positions."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    out = y.copy()
    where = rng.choice(len(y), round(0.1 * len(y)), replace=False)
    for i in where:
        out[i] = rng.choice([c for c in classes if c != y[i]])
    return out, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["hymenoptera", "trashnet"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--per-class", nargs="+", type=int, default=[0])
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    for name in args.data:
        if not (DATASETS / name).is_dir():
            print(f"\n{name}: skipped, not found at {DATASETS / name}")
            continue
        ds = load_dataset(DATASETS / name)
        paths = [s.path for s in ds.train]
        y_all = np.array([str(s.label) for s in ds.train], dtype=object)
        feats = {
            b: FeatureExtractor(b, layer="pre_logits", progress=False).fit().transform(paths)
            for b in ALL3
        }
        for per in args.per_class:
            what = "all" if per == 0 else f"{per} per class"
            print(f"\n{name}, training images: {what}; 10% of labels flipped per seed")
            print(f"  {'features, probe':40s} | " + " | ".join(f"seed {s}" for s in args.seeds)
                  + " | mean  | flagged, no flips")  # fmt: skip
            for label, (backbones, C) in SETS.items():
                recalls, clean = [], []
                for seed in args.seeds:
                    rows = np.arange(len(y_all))
                    if per:
                        rng = np.random.default_rng(seed)
                        rows = np.concatenate([
                            rng.choice(np.flatnonzero(y_all == c), per, replace=False)
                            for c in np.unique(y_all)
                        ])  # fmt: skip
                    X = np.hstack([feats[b][rows] for b in backbones])
                    y = y_all[rows]
                    noisy, where = flipped(y, seed)
                    k = len(where)
                    top = {i.index for i in label_issues(X, noisy, C=C)[:k]}
                    recalls.append(len(top & set(where)) / k)
                    clean.append(len(label_issues(X, y, C=C)))
                    if not per:  # the whole set: the same images for every seed
                        clean = clean[:1]
                print(f"  {label:40s} | " + " | ".join(f"{r:6.3f}" for r in recalls)
                      + f" | {np.mean(recalls):.3f} | {np.mean(clean):.1f} of {len(y)}")  # fmt: skip


if __name__ == "__main__":
    main()
