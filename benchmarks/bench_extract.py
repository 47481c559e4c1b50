"""Feature-extraction speed, side by side in one run (issue 8): transferlab's engines against a
naive PyTorch loop, and the model-only ceilings, on the same JPEG files.

    python benchmarks/bench_extract.py --data ../shared/datasets/hymenoptera --n 256

Prints images/s for:
  end to end (files on disk -> vectors, process already started, model loaded):
    naive      timm model + torchvision ImageFolder-style loading + default DataLoader, NCHW fp32
    torch      transferlab FeatureExtractor(engine="torch") (channels-last), no cache
    onnx       transferlab FeatureExtractor(engine="onnx"), no cache
    warm       transferlab with a warm feature cache
  model only (pre-decoded batch of 32):
    pytorch NCHW fp32, channels_last fp32, channels_last + bf16 autocast, onnxruntime fp32
then ratio lines (`extract_speedup_vs_naive=...`, `share_of_fastest_model_only=...`) and peak RSS.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
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


def _ours(paths: list[str], engine: str, cache: object) -> float:
    from transferlab.features import FeatureExtractor

    fx = FeatureExtractor(cache=cache, progress=False, engine=engine).fit()
    t = time.perf_counter()
    fx.extract(paths)
    return len(paths) / (time.perf_counter() - t)


def _model_only(reps: int = 3) -> dict[str, float]:
    from transferlab.backbones import OnnxTaps, load_backbone

    bb = load_backbone("efficientnet_lite0")
    x = torch.randn(32, 3, 224, 224)
    xl = x.contiguous(memory_format=torch.channels_last)
    runner = OnnxTaps(bb, ["pre_logits"], "avg", tempfile.mkdtemp())
    model = bb.model

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
        ("onnxruntime fp32", lambda: runner(x)),
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
    from transferlab.features import FeatureCache

    e2e = {"naive": _naive(paths, args.batch_size)}
    e2e["transferlab torch"] = _ours(paths, "torch", False)
    e2e["transferlab onnx"] = _ours(paths, "onnx", False)
    cache = FeatureCache(tempfile.mkdtemp())
    _ours(paths, "onnx", cache)
    e2e["transferlab warm cache"] = _ours(paths, "onnx", cache)
    mo = _model_only()
    print(f"{'end to end':<32}{'img/s':>10}")
    for k, v in e2e.items():
        print(f"{k:<32}{v:>10.1f}")
    print(f"{'model only (batch 32)':<32}{'img/s':>10}")
    for k, v in mo.items():
        print(f"{k:<32}{v:>10.1f}")
    best_cold = max(e2e["transferlab torch"], e2e["transferlab onnx"])
    print(f"extract_speedup_vs_naive={best_cold / e2e['naive']:.2f}")
    print(f"onnx_vs_torch_end_to_end={e2e['transferlab onnx'] / e2e['transferlab torch']:.2f}")
    print(f"share_of_fastest_model_only={best_cold / max(mo.values()):.2f}")
    print(f"warm_cache_speedup={e2e['transferlab warm cache'] / best_cold:.1f}")
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
