"""Feature-extraction speed, side by side in one run (issue 8): transferlab's engines against a
naive PyTorch loop, and the model-only ceilings, on the same JPEG files.

    python benchmarks/bench_extract.py --data ../shared/datasets/hymenoptera --n 256

Prints images/s for:
  end to end (files on disk -> vectors, process already started, model loaded):
    naive      timm model + torchvision ImageFolder-style loading + default DataLoader, NCHW fp32
    torch      transferlab FeatureExtractor(engine="torch") (channels-last), no cache
    onnx       transferlab FeatureExtractor(engine="onnx"), no cache (and with 0/1/2 decode workers)
    auto       transferlab's default engine, no cache
    warm       transferlab with a warm feature cache
    CLI        `transferlab extract DIR --no-cache --out f.npz`: process start to vectors written
  model only (pre-decoded batch of 32):
    pytorch NCHW fp32, channels_last fp32, channels_last + bf16 autocast, onnxruntime fp32
then probe fit time on the extracted vectors (transferlab's LinearProbe vs plain sklearn),
then where the time goes per image (decode / resize+crop / to tensor+normalise / forward / write),
then ratio lines (`extract_speedup_vs_naive=...`, `share_of_fastest_model_only=...`) and peak RSS.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch


def _naive(paths: list[str], batch_size: int) -> float:
    """What a user writes by hand: timm model, PIL + torchvision transforms, default loader."""
    from PIL import Image
    from torchvision import transforms as T

    from transferlab.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0", channels_last=False)
    model = bb.model.to(memory_format=torch.contiguous_format).eval()
    cfg = bb.data_config
    tf = T.Compose(
        [
            T.Resize(int(cfg["input_size"][-1] / cfg["crop_pct"])),
            T.CenterCrop(cfg["input_size"][-1]),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> torch.Tensor:
            return tf(Image.open(paths[i]).convert("RGB"))

    t = time.perf_counter()
    with torch.inference_mode():
        for x in torch.utils.data.DataLoader(DS(), batch_size=batch_size):
            model.forward_head(model.forward_features(x), pre_logits=True)
    return len(paths) / (time.perf_counter() - t)


def _ours(
    paths: list[str],
    engine: str,
    cache: object,
    workers: int | None = None,
    threads: int = 0,
    precision: str = "auto",
) -> float:
    from transferlab.features import FeatureCache, FeatureExtractor

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # ONNX Runtime's session takes the same thread count
    try:
        fx = FeatureExtractor(
            cache=cache or FeatureCache(_EXPORTS, vectors=False),
            progress=False,
            engine=engine,
            num_workers=workers,
            precision=precision,
            calibration=_TRAIN if precision == "int8" else None,
        )
        fx.fit()
        if engine != "torch" and not cache:  # the one-off export/session load is not per-image
            fx.extract(paths[:1])
        t = time.perf_counter()
        fx.extract(paths)
        return len(paths) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(saved)


#: exports (fp32 and int8) live here for the whole run; int8 calibrates on the train split
_EXPORTS = tempfile.mkdtemp()
_TRAIN: list[str] = []


def _cli(folder: str, n: int) -> float:
    """`transferlab extract` as a user runs it: process start to vectors written (feature cache
    off; the ONNX export from the runs above is reused, as on any second run)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "transferlab",
                "extract",
                folder,
                "--no-cache",
                "--out",
                os.path.join(tmp, "f.npz"),
            ],
            check=True,
            capture_output=True,
        )
        return n / (time.perf_counter() - t)


def _probe_fit(paths: list[str]) -> dict[str, float]:
    """Seconds to fit a probe on the (cached) features of `paths`, labelled by folder name:
    transferlab's LinearProbe (its defaults, and with C chosen by cross-validation) beside a
    plain scikit-learn LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    from transferlab.features import FeatureCache, FeatureExtractor
    from transferlab.probe import LinearProbe

    X = FeatureExtractor(cache=FeatureCache(tempfile.mkdtemp()), progress=False).transform(paths)
    y = [os.path.basename(os.path.dirname(p)) for p in paths]
    out = {}
    for name, est in (
        ("transferlab LinearProbe()", LinearProbe()),
        ('transferlab LinearProbe(C="auto")', LinearProbe(C="auto")),
        ("sklearn LogisticRegression(max_iter=1000)", LogisticRegression(max_iter=1000)),
    ):
        t = time.perf_counter()
        est.fit(X, y)
        out[name] = time.perf_counter() - t
    return out


def _profile(paths: list[str]) -> dict[str, float]:
    """Seconds per stage for `paths`, one at a time on one core: where the time goes."""
    import numpy as np
    from PIL import Image

    from transferlab.backbones import OnnxTaps, load_backbone
    from transferlab.features import FeatureCache

    bb = load_backbone("efficientnet_lite0")
    tf = bb.transform()
    geometry = tf.transforms[:-2]  # Resize, CenterCrop
    tensor = tf.transforms[-2:]  # ToTensor, Normalize
    out = dict.fromkeys(("decode", "resize+crop", "to tensor+normalise", "forward", "write"), 0.0)
    xs = []
    for p in paths:
        t0 = time.perf_counter()
        img = Image.open(p).convert("RGB")
        t1 = time.perf_counter()
        for step in geometry:
            img = step(img)
        t2 = time.perf_counter()
        x = img
        for step in tensor:
            x = step(x)
        t3 = time.perf_counter()
        out["decode"] += t1 - t0
        out["resize+crop"] += t2 - t1
        out["to tensor+normalise"] += t3 - t2
        xs.append(x)
    runner = OnnxTaps(bb, ["pre_logits"], "avg", tempfile.mkdtemp())
    vecs = []
    t = time.perf_counter()
    for i in range(0, len(xs), 32):
        vecs.append(runner(torch.stack(xs[i : i + 32]))["pre_logits"].numpy())
    out["forward"] = time.perf_counter() - t
    cache = FeatureCache(tempfile.mkdtemp())
    cache.register("bench", {})
    allv = np.concatenate(vecs)
    t = time.perf_counter()
    for i in range(0, len(allv), 32):
        cache.put_many("bench", {f"k{j}": allv[j] for j in range(i, min(i + 32, len(allv)))})
    out["write"] = time.perf_counter() - t
    return out


def _model_only(reps: int = 3) -> dict[str, float]:
    from transferlab.backbones import OnnxTaps, load_backbone

    bb = load_backbone("efficientnet_lite0")
    x = torch.randn(32, 3, 224, 224)
    xl = x.contiguous(memory_format=torch.channels_last)
    runner = OnnxTaps(bb, ["pre_logits"], "avg", tempfile.mkdtemp())
    model = bb.model
    from transferlab.features import FeatureCache, FeatureExtractor

    fx8 = FeatureExtractor(
        precision="int8", calibration=_TRAIN, cache=FeatureCache(_EXPORTS, vectors=False)
    ).prepare()
    int8 = next(iter(fx8._onnx_runners.values()))
    xn = x.numpy()

    nchw_model = load_backbone("efficientnet_lite0", channels_last=False).model

    def nchw() -> None:
        with torch.inference_mode():
            nchw_model.forward_features(x)

    def cl() -> None:
        with torch.inference_mode():
            model.forward_features(xl)

    def bf16() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.forward_features(xl)

    out = {}
    for name, fn in (
        ("pytorch NCHW fp32", nchw),
        ("pytorch channels_last fp32", cl),
        ("pytorch channels_last bf16", bf16),
        ("onnxruntime fp32 (static padding)", lambda: runner(x)),
        ("onnxruntime int8 (static quantisation)", lambda: int8(xn)),
    ):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name] = reps * 32 / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/hymenoptera")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    paths = sorted(
        p
        for p in glob.glob(os.path.join(args.data, "**", "*"), recursive=True)
        if p.lower().endswith((".jpg", ".jpeg", ".png"))
    )[: args.n]
    if not paths:
        raise SystemExit(f"no images under {args.data}")
    print(f"{len(paths)} images from {args.data}; torch threads {torch.get_num_threads()}")
    from bench_process import cpu_flags

    print(f"cpu flags: {cpu_flags()}")
    from transferlab.features import FeatureCache

    _TRAIN.extend(
        sorted(glob.glob(os.path.join(args.data, "train", "**", "*.jp*g"), recursive=True)) or paths
    )

    e2e = {"naive": _naive(paths, args.batch_size)}
    e2e["transferlab torch"] = _ours(paths, "torch", False)
    e2e["transferlab onnx"] = _ours(paths, "onnx", False)
    for w in (0, 1, 2):
        e2e[f"transferlab onnx, {w} decode threads"] = _ours(paths, "onnx", False, w)
    if torch.get_num_threads() > 1:
        n = torch.get_num_threads() - 1
        e2e[f"transferlab onnx, 1 decode + {n} ORT thread(s)"] = _ours(paths, "onnx", False, 1, n)
    e2e["transferlab default (auto)"] = _ours(paths, "auto", False)
    e2e["transferlab int8"] = _ours(paths, "auto", False, precision="int8")
    cache = FeatureCache(tempfile.mkdtemp())
    _ours(paths, "onnx", cache)
    e2e["transferlab warm cache"] = _ours(paths, "onnx", cache)
    folder = tempfile.mkdtemp()
    for i, p in enumerate(paths):  # the same images as a folder the CLI can read
        os.symlink(os.path.abspath(p), os.path.join(folder, f"{i:05d}{os.path.splitext(p)[1]}"))
    e2e["transferlab CLI, process start to file"] = _cli(folder, len(paths))
    mo = _model_only()
    prof = _profile(paths)
    fits = _probe_fit(paths)
    print(f"{'end to end':<32}{'img/s':>10}")
    for k, v in e2e.items():
        print(f"{k:<32}{v:>10.1f}")
    print(f"{'model only (batch 32)':<32}{'img/s':>10}")
    for k, v in mo.items():
        print(f"{k:<32}{v:>10.1f}")
    total = sum(prof.values())
    print(f"{'where the time goes (1 core)':<32}{'ms/img':>10}{'share':>8}")
    for k, v in prof.items():
        print(f"{k:<32}{1000 * v / len(paths):>10.2f}{v / total:>8.0%}")
    print(f"{'probe fit on ' + str(len(paths)) + ' vectors':<42}{'seconds':>10}")
    for k, v in fits.items():
        print(f"{k:<42}{v:>10.2f}")
    best_cold = e2e["transferlab default (auto)"]
    print(f"extract_speedup_vs_naive={best_cold / e2e['naive']:.2f}")
    print(f"onnx_vs_torch_end_to_end={e2e['transferlab onnx'] / e2e['transferlab torch']:.2f}")
    fp32_ceiling = mo["onnxruntime fp32 (static padding)"]
    int8_ceiling = mo["onnxruntime int8 (static quantisation)"]
    print(f"int8_speedup_vs_naive={e2e['transferlab int8'] / e2e['naive']:.2f}")
    print(f"share_of_own_model_only_default={best_cold / fp32_ceiling:.2f}")
    print(f"share_of_own_model_only_int8={e2e['transferlab int8'] / int8_ceiling:.2f}")
    print(f"warm_cache_speedup={e2e['transferlab warm cache'] / best_cold:.1f}")
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
