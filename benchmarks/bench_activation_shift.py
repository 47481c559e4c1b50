"""Does the activation-statistics shift (for networks without BatchNorm) locate a domain shift
where the BatchNorm shift does? Issue 20.

Transformers and ConvNeXt store no statistics, so `diagnose` compares every norm layer's input
statistics on the user's images with those on reference photos (`activation_shift`). No
pretrained transformer loads offline here, so the check runs where both measures exist: the
packaged, pretrained EfficientNet-Lite0. For each dataset, side by side: the BatchNorm
measure's verdict (`locate_shift` on target vs running statistics) and the activation
measure's (target vs reference half A, floor reference half B vs A), with W2 per tap.

    python benchmarks/bench_activation_shift.py [--images 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_int8 import cpu_flags

from transferlab.backbones import load_backbone
from transferlab.data import load_dataset
from transferlab.diagnose import (
    activation_shift,
    bn_shift,
    default_reference,
    image_batches,
    locate_shift,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DATASETS = ("hymenoptera", "trashnet", "aid_rs10", "pneumoniamnist")


def verdict(t: dict[str, float], r: dict[str, float]) -> str:
    shift, _ = locate_shift(t, r)
    if shift is None:
        return "no shift"
    return f"{'low' if shift.low else 'high'}-level from {shift.first_tap}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args()
    print(cpu_flags())
    bb = load_backbone("efficientnet_lite0")
    ref = default_reference()
    ref_batches = list(image_batches(bb, ref, batch_size=32))
    print(f"reference: {len(ref)} built-in photos; target: {args.images} training images each\n")
    print(f"{'dataset':16} {'BatchNorm measure':28} {'activation measure':28} seconds")
    for name in DATASETS:
        root = SHARED / name
        if not root.is_dir():
            print(f"{name:16} skipped: {root} not found")
            continue
        ds = load_dataset(root)
        rng = np.random.default_rng(0)
        train = list(ds.train)
        pick = [
            train[i].path
            for i in rng.choice(len(train), min(args.images, len(train)), replace=False)
        ]
        t0 = time.perf_counter()
        bt = bn_shift(bb, image_batches(bb, pick, batch_size=32)).by_tap()
        br = bn_shift(bb, iter(ref_batches)).by_tap()
        at, ar = activation_shift(bb, image_batches(bb, pick, batch_size=32), ref_batches)
        secs = time.perf_counter() - t0
        print(f"{name:16} {verdict(bt, br):28} {verdict(at.by_tap(), ar.by_tap()):28} {secs:.0f}")
        for label, t, r in (("BN", bt, br), ("act", at.by_tap(), ar.by_tap())):
            taps = [k for k in t if k in r]
            print(
                f"   {label:4} W2 target/ref: "
                + "  ".join(f"{k} {t[k]:.2f}/{r[k]:.2f}" for k in taps)
            )


if __name__ == "__main__":
    main()
