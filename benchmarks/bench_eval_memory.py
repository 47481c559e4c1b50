"""Peak memory of `transferlab evaluate` on many small generated images (issue 5 acceptance).

Generates N small PNGs in two learnable classes, fits a probe on a few of them, then evaluates
the saved model on all N in a fresh process and reports that process's peak RSS (ru_maxrss),
beside the peak of evaluating 1/10 of them: memory should not grow with the number of images.

    python benchmarks/bench_eval_memory.py --n 20000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import json, resource, sys, time
from transferlab.pipeline import evaluate_run
t = time.perf_counter()
res = evaluate_run(sys.argv[1], sys.argv[2], sys.argv[3], split="all", progress=False)
print(json.dumps({"n": res.metrics["n"], "accuracy": res.metrics["accuracy"], "seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_images(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for cls in ("hstripes", "vstripes"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:48, 0:48]
    for i in range(n):
        cls = "hstripes" if i % 2 == 0 else "vstripes"
        period = int(rng.integers(6, 12))
        m = ((yy if cls == "hstripes" else xx) // (period // 2)) % 2
        arr = (m[..., None] * rng.integers(80, 255, 3)[None, None, :]).astype(np.uint8)
        Image.fromarray(arr).save(root / cls / f"{i:06d}.png")


def evaluate(model: Path, data: Path, out: Path, cache: Path) -> dict:
    env = {"TRANSFERLAB_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(data), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    from transferlab.pipeline import FitConfig, fit

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_images(tmp / "all", args.n)
        make_images(tmp / "small", args.n // 10, seed=1)
        make_images(tmp / "train", 40, seed=2)
        print(f"generated {args.n} + {args.n // 10} images in {time.perf_counter() - t:.0f} s")
        res = fit(
            FitConfig(
                data=str(tmp / "train"),
                out=str(tmp / "fit"),
                backbone=args.backbone,
                cache_dir=str(tmp / "cache"),
                progress=False,
            )
        )
        small = evaluate(res.model_dir, tmp / "small", tmp / "eval-small", tmp / "cache")
        big = evaluate(res.model_dir, tmp / "all", tmp / "eval-all", tmp / "cache")
        print(f"{'images':>8}{'accuracy':>10}{'seconds':>9}{'img/s':>8}{'peak RSS MiB':>14}")
        for r in (small, big):
            print(
                f"{r['n']:>8}{r['accuracy']:>10.4f}{r['seconds']:>9.0f}{r['n'] / r['seconds']:>8.1f}{r['peak_rss_mib']:>14.0f}"
            )
        print(f"peak_rss_mib_{big['n']}={big['peak_rss_mib']:.0f}")
        print(f"peak_rss_growth_ratio_10x_images={big['peak_rss_mib'] / small['peak_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
