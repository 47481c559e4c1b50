"""Likely label errors found (issue 19): flip 10% of the training labels at random (seeded) and
count how many of the flipped images `diagnose.label_issues` puts in its top k (k = the number
flipped), per feature set, side by side; with no label flipped, how many it flags.

    python benchmarks/bench_label_issues.py [--data hymenoptera trashnet] [--seeds 0 1 2]

Features come from the default feature cache (the first run extracts them).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from bench_int8 import DATASETS, cpu_flags

from transferlab.data import load_dataset
from transferlab.diagnose import LABEL_ISSUE_C, label_issues
from transferlab.features import FeatureExtractor

SETS = {
    "lite0, C=1": (("efficientnet_lite0",), 1.0),
    "lite0+1+2, C=1": (("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"), 1.0),
    f"lite0+1+2, C={LABEL_ISSUE_C:g} (default)": (
        ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
        LABEL_ISSUE_C,
    ),
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
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    for name in args.data:
        if not (DATASETS / name).is_dir():
            print(f"\n{name}: skipped, not found at {DATASETS / name}")
            continue
        ds = load_dataset(DATASETS / name)
        paths = [s.path for s in ds.train]
        y = np.array([str(s.label) for s in ds.train], dtype=object)
        feats = {
            b: FeatureExtractor(b, layer="pre_logits", progress=False).fit().transform(paths)
            for b in SETS[next(iter(reversed(SETS)))][0]
        }
        k = round(0.1 * len(y))
        print(f"\n{name}: {len(y)} training images, {k} labels flipped per seed")
        print(f"  {'features, probe':34s} | " + " | ".join(f"seed {s}" for s in args.seeds)
              + " | flagged, no flips")  # fmt: skip
        for label, (backbones, C) in SETS.items():
            X = np.hstack([feats[b] for b in backbones])
            recalls = []
            for seed in args.seeds:
                noisy, where = flipped(y, seed)
                top = {i.index for i in label_issues(X, noisy, C=C)[:k]}
                recalls.append(len(top & set(where)) / k)
            clean = len(label_issues(X, y, C=C))
            print(f"  {label:34s} | " + " | ".join(f"{r:6.3f}" for r in recalls)
                  + f" | {clean} of {len(y)}")  # fmt: skip


if __name__ == "__main__":
    main()
