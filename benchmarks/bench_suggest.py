"""Which images to label next (issue 19): simulated labelling. The training images of a dataset
are the pool with their labels hidden; start from 1 labelled image per class (seeded), then
rounds up to 10, 20, ... 60 labels, each round's images chosen by a strategy of
`diagnose.suggest_labels` and labelled from the hidden truth; after each round a linear probe on
the labelled images is scored on the dataset's val split. Mean over seeds, side by side.

    python benchmarks/bench_suggest.py [--data trashnet aid_rs10] [--seeds 0 1 2 3 4]
        [--strategies random auto margin typical margin-diverse] [--backbone efficientnet_lite0]

The val split is only scored, never looked at by a strategy. Features come from the cache.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from bench_int8 import DATASETS, cpu_flags

from transferlab.data import load_dataset
from transferlab.diagnose import suggest_labels
from transferlab.features import FeatureExtractor
from transferlab.probe import LinearProbe

TOTALS = (10, 20, 30, 40, 50, 60)


def simulate(X, y, Xv, yv, strategy: str, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    labelled = [int(rng.choice(np.flatnonzero(y == c))) for c in np.unique(y)]
    accs = []
    for total in TOTALS:
        need = total - len(labelled)
        if need > 0:
            pool = np.setdiff1d(np.arange(len(y)), labelled)
            s = suggest_labels(
                X[labelled], y[labelled], X[pool], need, strategy=strategy, seed=seed
            )
            labelled += [int(pool[i]) for i in s.order]
        assert len(labelled) == len(set(labelled)) == total, (strategy, total, len(labelled))
        probe = LinearProbe(C=1.0, random_state=seed).fit(X[labelled], y[labelled])
        accs.append(float(np.mean(probe.predict(Xv) == yv)))
    return accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["trashnet", "aid_rs10"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategies", nargs="+", default=["random", "auto"])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; features {args.backbone} / pre_logits")
    for name in args.data:
        if not (DATASETS / name).is_dir():
            print(f"\n{name}: skipped, not found at {DATASETS / name}")
            continue
        ds = load_dataset(DATASETS / name)
        fx = FeatureExtractor(args.backbone, layer="pre_logits", progress=False).fit()
        X = fx.transform([s.path for s in ds.train])
        Xv = fx.transform([s.path for s in ds.val])
        y = np.array([str(s.label) for s in ds.train], dtype=object)
        yv = np.array([str(s.label) for s in ds.val], dtype=object)
        print(f"\n{name}: pool {len(y)} training images, {len(ds.classes)} classes, "
              f"scored on {len(yv)} val images; mean val accuracy over seeds {args.seeds}")  # fmt: skip
        print(f"  {'labels':16s} | " + " | ".join(f"{t:5d}" for t in TOTALS) + " | seconds")
        means = {}
        for strategy in args.strategies:
            t = time.perf_counter()
            runs = np.array([simulate(X, y, Xv, yv, strategy, s) for s in args.seeds])
            means[strategy] = runs.mean(axis=0)
            print(f"  {strategy:16s} | " + " | ".join(f"{a:.3f}" for a in means[strategy])
                  + f" | {time.perf_counter() - t:.1f}")  # fmt: skip
        if "random" in means:
            for strategy, m in means.items():
                if strategy != "random":
                    d = m - means["random"]
                    print(f"  {strategy + ' - random':16s} | " + " | ".join(f"{v:+.3f}" for v in d))


if __name__ == "__main__":
    main()
