"""Peak memory of `transferlab extract` on many small generated images (issue 8, item 4).

Generates N small PNGs, runs the real CLI (`transferlab extract DIR --out feats.parquet`) in a
fresh process on all N and on N/10, and prints each run's peak RSS: the largest of the main
process and its decoding workers (ru_maxrss over the process tree, read by a wrapper process).
Memory should stay flat in the number of images: vectors stream into the on-disk cache batch by
batch; only the final matrix (N x dim float32) is held to write the output file.

    python benchmarks/bench_extract_memory.py --n 50000 --layer stage1

`--layer stage1` keeps the run short on a small CPU (PyTorch stops at the tap); the memory
behaviour does not depend on the layer beyond the size of the vectors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_eval_memory import make_images

WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call([sys.executable, "-m", "transferlab", *sys.argv[1:]])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run(data: Path, out: Path, cache: Path, layer: str, engine: str) -> dict:
    args = [
        "extract",
        str(data),
        "--out",
        str(out),
        "--layer",
        layer,
        "--engine",
        engine,
        "--cache-dir",
        str(cache),
    ]
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"extract failed:\n{proc.stdout}\n{proc.stderr}")
    res = json.loads(lines[-1])
    if res["rc"] != 0:
        raise SystemExit(f"extract exited {res['rc']}:\n{proc.stdout}\n{proc.stderr}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--layer", default="stage1")
    ap.add_argument("--engine", default="torch", help="torch stops at the tap (short run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rows = []
        for n in (max(2, args.n // 10), args.n):
            data = tmp_path / f"imgs{n}"
            t = time.perf_counter()
            make_images(data, n)
            made = time.perf_counter() - t
            res = run(
                data,
                tmp_path / f"feats{n}.parquet",
                tmp_path / f"cache{n}",
                args.layer,
                args.engine,
            )
            rows.append((n, res["seconds"], res["peak_rss_mib"]))
            print(
                f"n={n}: generated in {made:.0f} s; extract {res['seconds']:.0f} s "
                f"({n / res['seconds']:.0f} img/s), peak RSS {res['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
        print()
        print(f"{'images':>8s} {'seconds':>8s} {'peak RSS MiB':>13s}")
        for n, s, m in rows:
            print(f"{n:>8d} {s:>8.0f} {m:>13.0f}")
        print()
        print(f"peak_rss_mib_{args.n}={rows[1][2]:.0f}")
        print(f"peak_rss_growth_10x_images={rows[1][2] / rows[0][2]:.2f}")


if __name__ == "__main__":
    main()
