"""Load on a real `transferlab serve` (issue 7): requests/s and p50/p99 latency for /v1/features and
predict with concurrent clients, beside the library's own extraction throughput on the same images.

    python benchmarks/bench_serve.py --data ../shared/datasets/hymenoptera --n 128
    python benchmarks/bench_serve.py --generated 64          # no dataset needed

What it does, all on loopback, and stops by itself (every phase is a fixed number of requests):
  1. starts `python -m transferlab.cli serve` in a subprocess on a free 127.0.0.1 port with a
     temporary data dir, creates an API key, a collection with a few labelled examples, trains it;
  2. library: `FeatureExtractor(cache=False).extract(paths)` on the N images, in this process
     while the server is idle (the same number of CPU cores either way);
  3. features: `--clients` threads, each with its own keep-alive connection, send multipart
     requests of `--per-request` images until every image has been sent `--rounds` times;
     2 and 3 alternate `--repeat` times and the best pass of each is compared (a shared machine's
     other load disturbs single passes);
  4. predict: the same clients send `--predict-requests` single-image predictions each;
  5. overload: a burst of `--burst` simultaneous feature requests against the in-flight bound
     (`--max-inflight`); the answers must be 200 or 503/429 (never a 500 or a dropped
     connection) and the server's peak memory is printed before and after.
Then ratio lines: ``serve_features_vs_library=0.NN`` (images/s through HTTP over the library's).
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _generated(n: int, folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """`n` photo-sized JPEGs of two kinds (stripes one way or the other), plus training sets."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def make(kind: str, i: int) -> str:
        h, w = 375, 500
        period = int(rng.integers(8, 40))
        axis = np.arange(h if kind == "h" else w)
        band = ((axis // period) % 2 * 180 + 40).astype(np.uint8)
        plane = np.repeat(band[:, None], w, 1) if kind == "h" else np.repeat(band[None, :], h, 0)
        noise = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        arr = np.clip(plane[..., None].astype(int) + noise, 0, 255).astype(np.uint8)
        p = folder / f"{kind}{i:04d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        return str(p)

    paths = [make("hv"[i % 2], i) for i in range(n)]
    train = {lab: [make(lab, 10_000 + i) for i in range(6)] for lab in ("h", "v")}
    return paths, train


def _dataset(root: str, n: int) -> tuple[list[str], dict[str, list[str]]] | None:
    def images(folder: str) -> list[str]:
        return sorted(
            p
            for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
            if p.lower().endswith((".jpg", ".jpeg", ".png"))
        )

    val = images(os.path.join(root, "val"))[:n]
    train_root = os.path.join(root, "train")
    if not val or not os.path.isdir(train_root):
        return None
    train = {
        lab: images(os.path.join(train_root, lab))[:6]
        for lab in sorted(os.listdir(train_root))
        if os.path.isdir(os.path.join(train_root, lab))
    }
    return val, train


def _start_server(data_dir: Path, port: int, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    import httpx

    env = {**os.environ, "TRANSFERLAB_DATA_DIR": str(data_dir), **env_extra}
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - the child writes to it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transferlab.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {data_dir}/server.log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not come up within 180 s")


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _run_clients(
    n_clients: int, jobs: list[list[Any]], send: Any, base: str, key: str
) -> tuple[list[float], Counter[int], float]:
    """Each client thread sends its own list of requests; returns latencies, statuses, wall s."""
    import httpx

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients + 1)

    def client(items: list[Any]) -> None:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as c:
            barrier.wait()
            for item in items:
                t = time.perf_counter()
                try:
                    status = send(c, item).status_code
                except httpx.HTTPError:
                    status = 0  # connection error: counted as an error
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    statuses[status] += 1

    threads = [threading.Thread(target=client, args=(jobs[i],)) for i in range(n_clients)]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    return latencies, statuses, time.perf_counter() - t0


def _report(name: str, lat: list[float], statuses: Counter[int], wall: float, images: int) -> int:
    ms = np.asarray(lat) * 1000
    errors = sum(v for k, v in statuses.items() if k != 200)
    print(
        f"{name:<18} requests={len(lat):>4}  {len(lat) / wall:7.2f} req/s  "
        f"{images / wall:7.2f} img/s  p50={np.percentile(ms, 50):7.1f} ms  "
        f"p99={np.percentile(ms, 99):7.1f} ms  errors={errors}  statuses={dict(statuses)}"
    )
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/hymenoptera", help="ImageFolder root")
    ap.add_argument("--n", type=int, default=128, help="images from DATA/val")
    ap.add_argument("--generated", type=int, default=0, help="use N generated JPEGs instead")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-request", type=int, default=4, help="images per /v1/features request")
    ap.add_argument("--rounds", type=int, default=1, help="times each image is sent per pass")
    ap.add_argument("--repeat", type=int, default=2, help="library/features passes, alternated")
    ap.add_argument("--predict-requests", type=int, default=8, help="per client")
    ap.add_argument("--burst", type=int, default=48, help="simultaneous requests (overload)")
    ap.add_argument("--max-inflight", type=int, default=16, help="the server's in-flight bound")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server.log) at the end")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    if args.generated:
        paths, train = _generated(args.generated, tmp / "images")
        source = f"{len(paths)} generated 500x375 JPEGs"
    else:
        found = _dataset(args.data, args.n)
        if found is None:
            print(f"SKIP: no ImageFolder with val/ and train/ at {args.data}; use --generated N")
            return
        paths, train = found
        source = f"{len(paths)} images from {args.data}/val"
    import torch

    print(f"{source}; {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")

    import httpx

    from transferlab.serve.store import Store

    data_dir = tmp / "service"
    store = Store(data_dir)
    _, key = store.create_key("bench")
    store.close()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "TRANSFERLAB_MAX_INFLIGHT": str(args.max_inflight),
    }
    t = time.perf_counter()
    proc = _start_server(data_dir, port, env)
    print(f"server up in {time.perf_counter() - t:.1f} s (pid {proc.pid}, port {port})")
    blobs = {p: Path(p).read_bytes() for p in paths}
    try:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as c:
            cid = c.post("/v1/collections", json={"name": "bench"}).raise_for_status().json()["id"]
            for label, files in train.items():
                for f in files:
                    c.post(
                        f"/v1/collections/{cid}/examples",
                        files={"file": (Path(f).name, Path(f).read_bytes(), "image/jpeg")},
                        data={"label": label},
                    ).raise_for_status()
            job = c.post(f"/v1/collections/{cid}/train").raise_for_status().json()
            while job["status"] not in ("succeeded", "failed"):
                time.sleep(0.2)
                job = c.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] != "succeeded":
                raise SystemExit(f"training failed: {job}")
            print(f"collection trained on {sum(map(len, train.values()))} examples")
            # warm-up: the first forward pass of a process is slow
            c.post("/v1/features", files=[("files", ("w.jpg", blobs[paths[0]], "image/jpeg"))])

        # -- the library and /v1/features, alternated -------------------------------------------
        # The machine may be shared: each side is measured --repeat times, alternating, and the
        # best pass of each is compared (the pass least disturbed by other load).
        from transferlab.features import FeatureExtractor

        fx = FeatureExtractor(cache=False, progress=False).fit()
        fx.extract(paths[:4])  # warm-up
        k = args.per_request
        order = paths * args.rounds
        chunks = [order[i : i + k] for i in range(0, len(order), k)]
        jobs: list[list[Any]] = [chunks[i :: args.clients] for i in range(args.clients)]

        def send_features(c: httpx.Client, chunk: list[str]) -> httpx.Response:
            files = [("files", (Path(p).name, blobs[p], "image/jpeg")) for p in chunk]
            return c.post("/v1/features", files=files)

        lib_runs, serve_runs = [], []
        errors = 0
        for r in range(args.repeat):
            t = time.perf_counter()
            lib = fx.extract(paths)
            lib_runs.append(len(lib.paths) / (time.perf_counter() - t))
            print(
                f"pass {r + 1}: {'library':<10} images={len(lib.paths):>4}  {lib_runs[-1]:7.2f} img/s"
            )
            lat, st, wall = _run_clients(args.clients, jobs, send_features, base, key)
            errors += _report(f"pass {r + 1}: features", lat, st, wall, len(order))
            serve_runs.append(len(order) / wall)
        del fx
        lib_ips, serve_ips = max(lib_runs), max(serve_runs)
        pairs = sorted(s / lb for s, lb in zip(serve_runs, lib_runs, strict=True))

        # -- predict ----------------------------------------------------------------------------
        pjobs = [
            [
                paths[(i * args.predict_requests + j) % len(paths)]
                for j in range(args.predict_requests)
            ]
            for i in range(args.clients)
        ]

        def send_predict(c: httpx.Client, p: str) -> httpx.Response:
            return c.post(
                f"/v1/collections/{cid}/predict", files={"file": ("q.jpg", blobs[p], "image/jpeg")}
            )

        lat, st, wall = _run_clients(args.clients, pjobs, send_predict, base, key)
        errors += _report("predict", lat, st, wall, len(lat))

        # -- overload: more simultaneous requests than the server admits ------------------------
        rss_before = _peak_rss_mib(proc.pid)
        bjobs = [[[paths[i % len(paths)]]] for i in range(args.burst)]
        lat, st, wall = _run_clients(args.burst, bjobs, send_features, base, key)
        bad = sum(v for s, v in st.items() if s not in (200, 429, 503))
        print(
            f"overload   {args.burst} simultaneous requests, in-flight bound {args.max_inflight}: "
            f"statuses={dict(sorted(st.items()))}  other_than_200/429/503={bad}  "
            f"max latency={max(lat) * 1000:.0f} ms  server peak RSS {rss_before:.0f} -> "
            f"{_peak_rss_mib(proc.pid):.0f} MiB"
        )
        alive = httpx.get(f"{base}/health", timeout=10).status_code
        print(f"after the burst /health -> {alive}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"errors={errors}")
    print(f"best library {lib_ips:.2f} img/s, best serve {serve_ips:.2f} img/s")
    print(f"per-pass ratios {', '.join(f'{x:.2f}' for x in pairs)}")
    print(f"serve_features_vs_library={serve_ips / lib_ips:.2f}")


if __name__ == "__main__":
    main()
