"""Ray Data extraction against the single-process path, on the same images (issue 9).

    python benchmarks/bench_ray.py --data ../shared/datasets/hymenoptera --n 128
    python benchmarks/bench_ray.py --synthetic --n 64      # generated JPEGs, no dataset needed

Prints, side by side, wall seconds and images/s for:
    single torch   FeatureExtractor(engine="torch").extract, no cache, model load included
    single auto    the same with the default engine (ONNX Runtime on CPU when it pays), for context
    ray 1 worker   extract_with_ray(workers=1) on a local cluster already started
    ray 2 workers  extract_with_ray(workers=2)
Each Ray run starts its actors (import torch, load the model) as a user's run would; the time to
its first shard and the rate after it are printed beside it, and the time to start the local
cluster below. Then ratio lines (`ray2_vs_single=...`: throughput relative to single torch;
`ray2_vs_ray1=...`: scaling from 1 to 2 workers, also once the actors are up) and the largest
difference between Ray's vectors and single torch's. Each actor reserves 1 CPU (Ray sets its torch threads to 1), while
the single process uses every core's thread. Stops by itself after --timeout seconds.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: every file the benchmark writes (generated images, listing, shards); removed at the end
WORK = tempfile.mkdtemp(prefix="bench-ray-")


def _images(args: argparse.Namespace) -> tuple[list[str], str]:
    if args.synthetic:
        from PIL import Image

        root = Path(tempfile.mkdtemp(prefix="images-", dir=WORK))
        rng = np.random.default_rng(0)
        for cls in ("a", "b"):
            (root / cls).mkdir()
        for i in range(args.n):
            arr = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / ("a", "b")[i % 2] / f"{i:04d}.jpg", quality=90)
        return sorted(glob.glob(str(root / "*" / "*.jpg"))), f"{args.n} generated 320x240 JPEGs"
    paths = sorted(
        p
        for p in glob.glob(os.path.join(args.data, "**", "*"), recursive=True)
        if p.lower().endswith((".jpg", ".jpeg", ".png"))
    )[: args.n]
    return paths, f"{len(paths)} images from {args.data}"


def _single(paths: list[str], engine: str) -> tuple[float, np.ndarray]:
    from transferlab.features import FeatureExtractor

    t = time.perf_counter()
    fx = FeatureExtractor(cache=False, progress=False, engine=engine)
    X = fx.extract(paths).features["pre_logits"]
    return time.perf_counter() - t, X


def _ray(listing: str, workers: int, shard_size: int) -> tuple[float, float, np.ndarray, list[str]]:
    from transferlab.features.ray import extract_with_ray, load_shards

    out = Path(tempfile.mkdtemp(prefix="out-", dir=WORK)) / "feats"
    res = extract_with_ray(listing, out, shard_size=shard_size, workers=workers, progress=False)
    got = load_shards(out)
    return res.seconds, res.first_shard_seconds, got["X"], got["paths"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/hymenoptera")
    ap.add_argument("--synthetic", action="store_true", help="generate --n JPEGs instead of --data")
    ap.add_argument("--n", type=int, default=128, help="images (the first N of --data, sorted)")
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--timeout", type=int, default=900, help="give up after this many seconds")
    args = ap.parse_args()

    def _stop(_sig: int, _frame: object) -> None:
        print(f"stopped: still running after --timeout {args.timeout} s")
        shutil.rmtree(WORK, ignore_errors=True)
        os._exit(1)

    signal.signal(signal.SIGALRM, _stop)
    signal.alarm(args.timeout)

    try:
        import ray
        import ray.data
    except ImportError as exc:
        print(f"skip: Ray Data is not installed ({exc}); pip install 'transferlab[ray]'")
        return
    if not args.synthetic and not os.path.isdir(args.data):
        print(f"skip: dataset {args.data} not found (pass --data DIR, or --synthetic --n N)")
        return
    paths, what = _images(args)
    if not paths:
        print(f"skip: no images under {args.data}")
        return
    # a Parquet listing of exactly these paths, so the Ray runs see the same images
    import pyarrow as pa
    import pyarrow.parquet as pq

    listing = os.path.join(WORK, "listing.parquet")
    pq.write_table(pa.table({"path": [os.path.abspath(p) for p in paths]}), listing)

    import torch

    for p in paths:  # page cache warm for every contender alike
        with open(p, "rb") as fh:
            fh.read()
    print(f"{what}; {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"ray {ray.__version__}, shards of {args.shard_size}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    rows: dict[str, float] = {}
    first: dict[str, float] = {}
    rows["single torch"], X_single = _single(paths, "torch")
    rows["single auto"], _ = _single(paths, "auto")
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    ray_init = time.perf_counter() - t
    try:
        rows["ray 1 worker"], first["ray 1 worker"], X1, order = _ray(listing, 1, args.shard_size)
        rows["ray 2 workers"], first["ray 2 workers"], X2, _ = _ray(listing, 2, args.shard_size)
    finally:
        ray.shutdown()
    assert order == [os.path.abspath(p) for p in paths], "Ray rows differ from the listing"
    n = len(paths)
    print(f"{'':<16}{'seconds':>10}{'img/s':>10}{'1st shard s':>13}{'img/s after':>13}")
    for name, s in rows.items():
        line = f"{name:<16}{s:>10.1f}{n / s:>10.1f}"
        if name in first:  # throughput once the first shard is out (actors up), roughly
            rest = s - first[name]
            after = (n - args.shard_size) / rest if rest > 0 else float("nan")
            line += f"{first[name]:>13.1f}{after:>13.1f}"
        print(line)
    print(f"{'(ray.init)':<16}{ray_init:>10.1f}")
    single = rows["single torch"]
    print(f"ray1_vs_single={single / rows['ray 1 worker']:.2f}")
    print(f"ray2_vs_single={single / rows['ray 2 workers']:.2f}")
    print(f"ray2_vs_ray1={rows['ray 1 worker'] / rows['ray 2 workers']:.2f}")
    after = {k: (n - args.shard_size) / max(rows[k] - first[k], 1e-9) for k in first}
    print(f"ray2_vs_ray1_after_first_shard={after['ray 2 workers'] / after['ray 1 worker']:.2f}")
    print(f"ray2_overhead_s={rows['ray 2 workers'] - single:.1f}")
    diff = max(float(np.abs(X1 - X_single).max()), float(np.abs(X2 - X_single).max()))
    print(f"max_abs_diff_vs_single={diff:.1e}")
    print(f"load_average_1min={os.getloadavg()[0]:.1f} (at the end; {os.cpu_count()} cores)")
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
