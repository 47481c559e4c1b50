"""`transferlab fit` on a real dataset: accuracy, cold vs warm-cache extraction, broken-file handling.

Prints figures side by side and ratio lines; it asserts nothing (targets live in RESULTS.md).

    python benchmarks/bench_fit.py                       # hymenoptera, default backbone
    python benchmarks/bench_fit.py --data ../shared/datasets/trashnet
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"


def run_fit(data: Path, out: Path, cache: Path, *extra: str) -> tuple[dict, float, int, str]:
    cmd = [
        sys.executable,
        "-m",
        "transferlab.cli",
        "fit",
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    metrics = (
        json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    )
    return metrics, wall, proc.returncode, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    if not args.data.exists():
        print(f"skip: {args.data} not found (needs ../shared/datasets)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cache = tmp_path / "cache"
        cold, cold_wall, rc1, _ = run_fit(
            args.data, tmp_path / "cold", cache, "--backbone", args.backbone
        )
        warm, warm_wall, rc2, _ = run_fit(
            args.data, tmp_path / "warm", cache, "--backbone", args.backbone
        )
        print(f"dataset={args.data.name} backbone={args.backbone} exit_codes={rc1},{rc2}")
        print(
            f"{'run':<6}{'accuracy':>10}{'n_train':>9}{'n_val':>7}{'extract_s':>11}{'cached':>8}{'total_s':>9}{'wall_s':>8}"
        )
        for name, m, wall in (("cold", cold, cold_wall), ("warm", warm, warm_wall)):
            print(
                f"{name:<6}{m['accuracy']:>10.4f}{m['n_train']:>9}{m['n_val']:>7}"
                f"{m['stage_seconds']['extract']:>11.2f}{m['n_cached']:>8}{m['seconds']:>9.2f}{wall:>8.2f}"
            )
        ratio = cold["stage_seconds"]["extract"] / max(warm["stage_seconds"]["extract"], 1e-9)
        print(f"accuracy={cold['accuracy']:.4f}")
        print(f"cold_extract_images_per_s={cold['extract_images_per_second']:.1f}")
        print(f"warm_extract_speedup_vs_cold={ratio:.1f}")


if __name__ == "__main__":
    main()
