"""Whole processes, timed as a user times them (issue 17 items 3 and 4), side by side in one run.

    python benchmarks/bench_process.py --data ../shared/datasets/hymenoptera

1. Extraction, process start to file written, feature cache off, after one untimed run of each
   (so the one-off ONNX export and the backbone card exist, as on any second run):
     naive      `python benchmarks/naive_extract.py DIR --out f.npz` (timm + torchvision + DataLoader)
     default    `transferlab extract DIR --no-cache --out f.npz`
     int8       the same with `--precision int8` (when this build has it)
   Runs are interleaved, `--repeats` times; the median is reported. Ratio lines follow.
2. `transferlab fit DATA` cold (a fresh cache folder: no vectors, no export, no card) against the
   same command warm (every vector cached), process start to files written.
Prints the CPU's SIMD flags, versions and whether torch was imported by the warm run.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(line for line in fh if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return "unknown"
    keep = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    return " ".join(f for f in keep if f in flags) or "none of AVX2/AVX-512"


def _time(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/hymenoptera")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-fit", action="store_true")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"SKIP: {args.data} not found (needs ../shared/datasets)")
        return
    n = sum(
        1
        for p in glob.glob(os.path.join(args.data, "**", "*"), recursive=True)
        if p.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    versions = ", ".join(
        f"{d} {metadata.version(d)}" for d in ("torch", "timm", "onnxruntime", "pillow", "numpy")
    )
    print(f"cpu: {os.cpu_count()} cpus, flags: {cpu_flags()}")
    print(f"versions: python {sys.version.split()[0]}, {versions}")
    print(f"images: {n} from {args.data}")
    tmp = tempfile.mkdtemp()
    cache = os.path.join(tmp, "cache")
    tl = [sys.executable, "-m", "transferlab"]
    cmds = {
        "naive script": [sys.executable, os.path.join(HERE, "naive_extract.py"), args.data],
        "transferlab extract (default)": [
            *tl,
            "extract",
            args.data,
            "--no-cache",
            "--cache-dir",
            cache,
        ],
    }
    from transferlab.features import PRECISIONS

    if "int8" in PRECISIONS:
        cmds["transferlab extract --precision int8"] = [
            *tl,
            "extract",
            args.data,
            "--no-cache",
            "--cache-dir",
            cache,
            "--precision",
            "int8",
        ]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for c in cmds.values():  # untimed: exports, cards, OS file cache
        _time([*c, "--out", os.path.join(tmp, "warmup.npz")])
    for _ in range(args.repeats):
        for k, c in cmds.items():
            times[k].append(_time([*c, "--out", os.path.join(tmp, "f.npz")]))
    print(f"\n{'whole process (extract, no feature cache)':<44}{'median s':>10}{'img/s':>10}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<44}{v:>10.2f}{n / v:>10.1f}")
    naive = med["naive script"]
    print(f"\nprocess_speedup_default_vs_naive={naive / med['transferlab extract (default)']:.2f}")
    if "transferlab extract --precision int8" in med:
        print(
            f"process_speedup_int8_vs_naive={naive / med['transferlab extract --precision int8']:.2f}"
        )
    if args.skip_fit:
        return
    fit_cache = os.path.join(tmp, "fit-cache")
    cold = _time(
        [*tl, "fit", args.data, "--out", os.path.join(tmp, "cold"), "--cache-dir", fit_cache]
    )
    warm = [
        _time(
            [
                *tl,
                "fit",
                args.data,
                "--out",
                os.path.join(tmp, f"warm{i}"),
                "--cache-dir",
                fit_cache,
            ]
        )
        for i in range(args.repeats)
    ]
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runpy; sys.argv=['transferlab','fit',sys.argv[1],'--out',sys.argv[2],"
            "'--cache-dir',sys.argv[3]]\ntry:\n runpy.run_module('transferlab',run_name='__main__')\n"
            "except SystemExit: pass\nprint('torch imported:', 'torch' in sys.modules)",
            args.data,
            os.path.join(tmp, "warm-probe"),
            fit_cache,
        ],
        capture_output=True,
        text=True,
    )
    print(f"\n{'transferlab fit, process start to files':<44}{'s':>10}")
    print(f"{'cold (fresh cache folder)':<44}{cold:>10.2f}")
    print(f"{'warm (median of ' + str(args.repeats) + ')':<44}{statistics.median(warm):>10.2f}")
    print(probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else probe.stderr[-500:])
    print(f"\nwarm_fit_speedup={cold / statistics.median(warm):.1f}")


if __name__ == "__main__":
    main()
