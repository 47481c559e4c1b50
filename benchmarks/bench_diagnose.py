"""Time `transferlab diagnose` on N images, cold (empty feature cache) and warm (issue 6: "diagnosis
on 5,000 images runs on CPU in minutes, reusing the feature cache").

By default generates N small images in two classes (stripes whose colour and period vary); pass
`--data DIR` to time a real dataset instead.

    python benchmarks/bench_diagnose.py --n 5000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench_eval_memory import make_images  # same generator as the memory benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--data", default=None)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    from transferlab.pipeline import DiagnoseConfig, diagnose_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            make_images(tmp / "data", args.n)
            data = str(tmp / "data")
        rows = []
        for run in ("cold", "warm"):
            t = time.perf_counter()
            res = diagnose_run(
                DiagnoseConfig(
                    data=data,
                    out=str(tmp / f"out-{run}"),
                    backbone=args.backbone,
                    max_images=args.n,
                    cache_dir=str(tmp / "cache"),
                    progress=False,
                )
            )
            wall = time.perf_counter() - t
            rows.append((run, res.metrics["n_images"], wall, res.metrics["seconds"]))
            print(run, json.dumps(res.metrics["seconds"]), flush=True)
        print(f"{'run':>6}{'images':>8}{'seconds':>9}")
        for run, n, wall, _ in rows:
            print(f"{run:>6}{n:>8}{wall:>9.0f}")
        print(f"diagnose_cold_seconds_{rows[0][1]}={rows[0][2]:.0f}")
        print(f"diagnose_warm_seconds_{rows[1][1]}={rows[1][2]:.0f}")
        print(f"warm_speedup={rows[0][2] / rows[1][2]:.1f}")


if __name__ == "__main__":
    main()
