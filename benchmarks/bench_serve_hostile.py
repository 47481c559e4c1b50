"""A real `transferlab serve` under the hostile uploads of issue 21, side by side with the same
burst of ordinary requests alone: status codes, the server's resident memory (sampled every
20 ms: at the start, its peak, and 3 s after the burst).

The two hostile PNGs are the tester's: 4 x 9,999,999 (72 KB, 40 M pixels, under the default
pixel limit) and 64 x 625,000; each is sent at the same moment as 3 ordinary requests.

    python benchmarks/bench_serve_hostile.py
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench_int8 import cpu_flags
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop = True
        self._t.join()
        return self.peak


def main() -> None:
    print(cpu_flags())
    photos = sorted((SHARED / "hymenoptera" / "val" / "ants").glob("*.jpg"))[:3]
    if len(photos) < 3:
        print(f"skipped: hymenoptera not found under {SHARED}")
        return
    ordinary = [p.read_bytes() for p in photos]
    hostile = {"4x9999999.png": png(4, 9_999_999), "64x625000.png": png(64, 625_000)}
    for name, data in hostile.items():
        print(f"{name}: {len(data) / 1024:.0f} KB")
    data_dir = Path(tempfile.mkdtemp(prefix="tl-hostile-"))
    from transferlab.serve.store import Store

    store = Store(data_dir)
    _, key = store.create_key("bench")
    store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transferlab.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)

        def send(name: str, data: bytes) -> int:
            files = [("files", (name, data, "application/octet-stream"))]
            return httpx.post(
                f"{url}/v1/features", headers=headers, files=files, timeout=120
            ).status_code

        send("warm.jpg", ordinary[0])  # the first request builds the ONNX session
        print(f"\nserver RSS after start and one request: {rss_mb(proc.pid):.0f} MB\n")
        print(f"{'burst':34} {'statuses':24} {'RSS before':>10} {'peak':>8} {'3 s after':>10}")
        bursts = [("3 ordinary alone", [])] + [(f"{n} + 3 ordinary", [n]) for n in hostile]
        for label, bad in bursts:
            before = rss_mb(proc.pid)
            sampler = Sampler(proc.pid)
            jobs = [(n, hostile[n]) for n in bad] + [
                (f"{i}.jpg", d) for i, d in enumerate(ordinary)
            ]
            with ThreadPoolExecutor(len(jobs)) as pool:
                codes = list(pool.map(lambda j: send(*j), jobs))
            time.sleep(3)
            peak = sampler.stop()
            print(
                f"{label:34} {' '.join(map(str, codes)):24} {before:10.0f} {peak:8.0f} {rss_mb(proc.pid):10.0f}"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
