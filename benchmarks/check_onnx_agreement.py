"""How far ONNX Runtime's vectors are from PyTorch's on the same images (issue 16: unchanged by the
refactor). Prints the largest absolute difference per layer on 24 hymenoptera validation photos.

    python benchmarks/check_onnx_agreement.py [--src DIR]   # --src: another checkout's src/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hymenoptera" / "val"


def cpu_flags() -> str:
    try:
        words = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    return " ".join(sorted(w for w in words if w.startswith(("avx", "amx", "fma"))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", help="import transferlab from this src/ folder instead")
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    import transferlab
    from transferlab import FeatureExtractor

    if not DATA.is_dir():
        sys.exit(f"needs {DATA} (../shared/datasets beside the repo)")
    paths = sorted(str(p) for p in DATA.glob("*/*.jpg"))[:24]
    print(f"transferlab from {Path(transferlab.__file__).parent}; CPU flags: {cpu_flags()}")
    for layer in ("pre_logits", "stage3"):
        kw = {"layer": layer, "cache": False, "progress": False}
        a = FeatureExtractor("efficientnet_lite0", engine="onnx", **kw).transform(paths)
        b = FeatureExtractor("efficientnet_lite0", engine="torch", **kw).transform(paths)
        print(f"{layer:>10}: max |onnx - torch| = {float(np.abs(a - b).max()):.3g} over {a.shape}")


if __name__ == "__main__":
    main()
