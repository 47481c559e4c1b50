"""Remedies for a train -> target domain shift, side by side on synthetic shifts (issue 22).

The shifts are built from ../shared/datasets: the val photos re-rendered as another domain with
PIL filters defined HERE (not the library's style renderings, so the ``style`` remedy is not a
filter matching itself):

* hymenoptera -> edges:  greyscale, FIND_EDGES, inverted, autocontrast (dark edges on white)
* hymenoptera -> sketch: the "colour dodge" pencil sketch (grey / blurred inverted grey)
* hymenoptera -> grey:   plain greyscale
* trashnet    -> colour: hue rotated by 140 degrees, contrast x0.45, brightness x1.25

Each dataset folder is train (photos), val (the untouched val photos: in-domain) and test (the
same val photos re-rendered: cross-domain). Every figure runs the product's code: `run_fit`
with ``--remedy`` (the target is the test folder, unlabelled: transductive for coral and
self-train, which the metrics say) and `run_finetune` (epoch and WiSE choices on the in-domain
val photos, never on the shifted images). AdaBN per domain: the training vectors from the
network as trained, the target's from a copy whose BatchNorm statistics were re-estimated on
the target images.

    python benchmarks/bench_domain_shift.py                 # probes, ~3 min warm
    python benchmarks/bench_domain_shift.py --finetune      # + plain vs style fine-tunes
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_int8 import DATASETS, cpu_flags
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


def _edges(im: Image.Image) -> Image.Image:
    g = ImageOps.grayscale(im).filter(ImageFilter.FIND_EDGES)
    return ImageOps.autocontrast(ImageOps.invert(g), cutoff=1).convert("RGB")


def _sketch(im: Image.Image) -> Image.Image:
    g = ImageOps.grayscale(im)
    blur = ImageOps.invert(g).filter(ImageFilter.GaussianBlur(6))
    a, b = np.asarray(g, np.float32), np.asarray(blur, np.float32)
    out = np.clip(a * 255.0 / np.maximum(255.0 - b, 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out).convert("RGB")


def _grey(im: Image.Image) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def _colour(im: Image.Image) -> Image.Image:
    h, s, v = im.convert("HSV").split()
    h = h.point(lambda x: (x + 100) % 256)
    im = Image.merge("HSV", (h, s, v)).convert("RGB")
    im = ImageEnhance.Contrast(im).enhance(0.45)
    return ImageEnhance.Brightness(im).enhance(1.25)


SHIFTS = {
    "hymenoptera->edges": ("hymenoptera", _edges),
    "hymenoptera->sketch": ("hymenoptera", _sketch),
    "hymenoptera->grey": ("hymenoptera", _grey),
    "trashnet->colour": ("trashnet", _colour),
}


def build(name: str, root: Path) -> Path:
    """train -> the photos, val -> the val photos, test -> the val photos re-rendered."""
    ds_name, fn = SHIFTS[name]
    src = DATASETS / ds_name
    out = root / name.replace("->", "_to_")
    if (out / "test").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if not (out / split).exists():
            os.symlink(src / split, out / split)
    tmp = out / "test.tmp"
    for p in sorted((src / "val").rglob("*")):
        if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            q = tmp / p.relative_to(src / "val").with_suffix(".png")
            q.parent.mkdir(parents=True, exist_ok=True)
            im = Image.open(p).convert("RGB")
            im.thumbnail((320, 320))
            fn(im).save(q)
    tmp.rename(out / "test")
    return out


def probe_rows(data: Path, work: Path) -> dict[str, tuple[float, float]]:
    """remedy -> (in-domain val accuracy, cross-domain test accuracy), through `run_fit`."""
    from transferlab.pipeline import FitConfig, run_fit

    rows = {}
    for remedy in ("none", "style", "coral", "self-train", "auto"):
        cfg = FitConfig(
            data=str(data),
            out=str(work / f"fit-{data.name}-{remedy}"),
            overwrite=True,
            progress=False,
            target=str(data / "test") if remedy != "none" else None,
            remedy=remedy,
        )
        m = run_fit(cfg).metrics
        label = remedy if remedy != "auto" else f"auto (= {m['domain']['remedy']})"
        rows[label] = (m["accuracy"], m["test"]["accuracy"])
    rows["AdaBN on the target"] = adabn_row(data)
    return rows


def adabn_row(data: Path) -> tuple[float, float]:
    """The probe on the trained network's vectors; the target's through a copy whose BatchNorm
    statistics were re-estimated on the target images (AdaBN per domain)."""
    from transferlab.backbones import load_backbone
    from transferlab.data import load_dataset
    from transferlab.diagnose import adapt_bn, image_batches
    from transferlab.features import FeatureExtractor
    from transferlab.probe import LinearProbe

    ds = load_dataset(str(data))
    fx = FeatureExtractor(progress=False)
    X = {n: fx.transform([s.path for s in getattr(ds, n)]) for n in ("train", "val", "test")}
    y = {n: np.asarray([s.label for s in getattr(ds, n)]) for n in ("train", "val", "test")}
    bb = load_backbone("efficientnet_lite0")
    test_paths = [s.path for s in ds.test]
    adapted = adapt_bn(bb, image_batches(bb, test_paths, batch_size=32))
    X_test = FeatureExtractor(adapted, progress=False).transform(test_paths)
    probe = LinearProbe().fit(X["train"], y["train"])
    return probe.score(X["val"], y["val"]), probe.score(X_test, y["test"])


def finetune_rows(data: Path, work: Path, epochs: int) -> dict[str, tuple[float, float]]:
    from transferlab.finetune import FinetuneConfig
    from transferlab.pipeline import FinetuneRunConfig, run_finetune

    rows = {}
    for remedy in ("none", "style"):
        cfg = FinetuneRunConfig(
            data=str(data),
            out=str(work / f"ft-{data.name}-{remedy}"),
            finetune=FinetuneConfig(epochs=epochs, freeze_epochs=1, seed=0),
            overwrite=True,
            progress=False,
            remedy=remedy,
        )
        m = run_finetune(cfg).metrics
        rows[f"fine-tune {epochs}+1 ep, {remedy}"] = (m["accuracy"], m["test"]["accuracy"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shifts", default=",".join(SHIFTS))
    ap.add_argument("--finetune", action="store_true", help="also fine-tune (minutes per shift)")
    ap.add_argument("--finetune-shifts", default="hymenoptera->edges,hymenoptera->sketch")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "transferlab-shifts"))
    args = ap.parse_args()
    print(f"cpu: {cpu_flags()}")
    work = Path(args.work)
    for name in args.shifts.split(","):
        if not (DATASETS / SHIFTS[name][0]).exists():
            print(f"SKIP {name}: {DATASETS / SHIFTS[name][0]} not found")
            continue
        data = build(name, work / "data")
        t0 = time.perf_counter()
        rows = probe_rows(data, work / "runs")
        if args.finetune and name in args.finetune_shifts.split(","):
            rows.update(finetune_rows(data, work / "runs", args.epochs))
        plain_in, plain_cross = rows["none"]
        print(
            f"\n== {name}   (in = val photos, cross = the same photos re-rendered; "
            f"{time.perf_counter() - t0:.0f} s)"
        )
        print(f"{'remedy':34s} {'in':>6s} {'cross':>6s} {'d in':>6s} {'d cross':>8s}")
        for label, (a_in, a_cross) in rows.items():
            print(
                f"{label:34s} {a_in:6.3f} {a_cross:6.3f} {100 * (a_in - plain_in):+6.1f} "
                f"{100 * (a_cross - plain_cross):+8.1f}"
            )


if __name__ == "__main__":
    main()
