"""Acceptance check: `fit` on a folder mixing good images with each kind of broken file.

Builds the folder from a slice of hymenoptera (or generated images when it is absent), adds one
file of each broken kind, runs `transferlab fit` without and with `--strict`, and prints the
exit codes and the files each run named.

    python benchmarks/broken_folder.py
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HYM = ROOT.parent / "shared" / "datasets" / "hymenoptera"


def build(root: Path) -> list[Path]:
    for split, n in (("train", 20), ("val", 10)):
        for cls in ("ants", "bees"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            if HYM.exists():
                for p in sorted((HYM / split / cls).iterdir())[:n]:
                    shutil.copy(p, dst / p.name)
            else:
                for i in range(n):
                    Image.new(
                        "RGB", (64, 64), (200, 30 * i % 255, 40) if cls == "ants" else (20, 90, 200)
                    ).save(dst / f"{i}.png")
    folder = root / "train" / "ants"
    good = sorted(folder.iterdir())[0]
    buf = io.BytesIO()
    Image.open(good).convert("RGB").save(buf, "JPEG")
    broken = {
        "zero-byte": folder / "broken_zero.jpg",
        "truncated": folder / "broken_truncated.jpg",
        "non-image": folder / "broken_text.jpg",
        "corrupt": folder / "broken_corrupt.png",
        "unreadable (dangling link)": folder / "broken_link.jpg",
        "decompression bomb": folder / "broken_bomb.png",
    }
    broken["zero-byte"].write_bytes(b"")
    broken["truncated"].write_bytes(buf.getvalue()[: buf.tell() // 2])
    broken["non-image"].write_text("not a picture")
    broken["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    broken["unreadable (dangling link)"].symlink_to(folder / "missing.jpg")
    Image.new("1", (10000, 10000)).save(broken["decompression bomb"])  # 100 Mpx > Pillow's 89 Mpx
    for kind, p in broken.items():
        print(f"  {kind:<28} {p.name}")
    return list(broken.values())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mixed"
        print(f"folder {root}:")
        broken = build(root)
        for extra in ([], ["--strict"]):
            cmd = [
                sys.executable,
                "-m",
                "transferlab.cli",
                "fit",
                str(root),
                "--out",
                str(Path(tmp) / f"run{len(extra)}"),
                "--cache-dir",
                str(Path(tmp) / "cache"),
                *extra,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            text = proc.stdout + proc.stderr
            named = [p.name for p in broken if p.name in text]
            print(f"transferlab fit mixed/ {' '.join(extra)}".strip())
            print(f"  exit_code={proc.returncode} broken_files_named={len(named)}/{len(broken)}")
            for line in text.strip().splitlines():
                if "broken_" in line or "error" in line or "accuracy" in line:
                    print(f"  | {line.strip()}")


if __name__ == "__main__":
    main()
