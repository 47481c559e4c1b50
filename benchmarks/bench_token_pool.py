"""Which token pooling makes the best linear-probe features of a vision transformer? Issue 20.

For each dataset: the probe's validation accuracy on ``pre_logits`` features pooled as the
model's own head does (``avg`` here means timm's ``global_pool``: the class token for ViT,
DINOv2 and CLIP), the class token, the mean of the patch tokens, and both concatenated (the
DINOv2 linear evaluation), side by side; the probe's C chosen by cross-validation on the
training split, the figure from the val split.

Needs pretrained transformer weights: run it where the hub is reachable
(``--weights hub``, the default) or with a local file (``--weights PATH``). On this project's
offline machines no pretrained transformer loads, so the figures are not in RESULTS.md yet;
``--weights random`` only checks that the script runs.

    python benchmarks/bench_token_pool.py --backbone vit_small_patch14_dinov2.lvd142m
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_int8 import cpu_flags

from transferlab.data import load_dataset
from transferlab.features import FeatureExtractor
from transferlab.probe import LinearProbe

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
POOLS = ("avg", "token", "patch", "token_patch")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="vit_small_patch14_dinov2.lvd142m")
    ap.add_argument("--weights", default="hub")
    ap.add_argument("--datasets", default="hymenoptera,trashnet,aid_rs10")
    args = ap.parse_args()
    print(cpu_flags())
    print(f"{args.backbone} ({args.weights}); val accuracy of a probe on pre_logits\n")
    print(f"{'dataset':14} " + " ".join(f"{p:>12}" for p in POOLS) + "  seconds")
    for name in args.datasets.split(","):
        root = SHARED / name
        if not root.is_dir():
            print(f"{name:14} skipped: {root} not found")
            continue
        ds = load_dataset(root)
        t0 = time.perf_counter()
        accs = []
        for pool in POOLS:
            fx = FeatureExtractor(args.backbone, weights=args.weights, pool=pool, progress=False)
            Xtr = fx.transform([s.path for s in ds.train])
            Xva = fx.transform([s.path for s in ds.val])
            probe = LinearProbe().fit(Xtr, [s.label for s in ds.train])
            accs.append(probe.score(Xva, [s.label for s in ds.val]))
        print(
            f"{name:14} "
            + " ".join(f"{a:12.4f}" for a in accs)
            + f"  {time.perf_counter() - t0:.0f}"
        )


if __name__ == "__main__":
    main()
