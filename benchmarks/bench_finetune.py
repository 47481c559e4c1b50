"""Fine-tuning speed, side by side in one run (issue 8 (d)): transferlab's training loop against a
naive fp32 NCHW PyTorch loop on the same JPEG files.

    python benchmarks/bench_finetune.py --data ../shared/datasets/hymenoptera --n 128

Prints training images/s (one epoch over the same `n` training images, every layer trainable):
    naive       timm model + torchvision transforms + default DataLoader, NCHW fp32, AdamW, batch 32
    transferlab FineTuner one epoch (channels-last, pre-decoded images, its augmentation), fp32
    bf16        the same with bf16 autocast (only where FinetuneConfig has `precision`)
then the ratio line `finetune_speedup_vs_naive=...` and peak RSS.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time

import torch


def _naive(paths: list[str], labels: list[int], batch_size: int) -> float:
    """What a user writes by hand, as in the PyTorch transfer-learning tutorial."""
    from PIL import Image
    from torchvision import transforms as T

    from transferlab.backbones import load_backbone

    bb = load_backbone("efficientnet_lite0", channels_last=False)
    model = bb.model.to(memory_format=torch.contiguous_format)
    model.reset_classifier(max(labels) + 1)
    cfg = bb.data_config
    tf = T.Compose(
        [
            T.RandomResizedCrop(cfg["input_size"][-1]),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return tf(Image.open(paths[i]).convert("RGB")), labels[i]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    t = time.perf_counter()
    for x, y in torch.utils.data.DataLoader(DS(), batch_size=batch_size, shuffle=True):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(paths) / (time.perf_counter() - t)


def _transferlab(train: list, val: list, classes: list[str], **extra: object) -> float:
    from transferlab.finetune import FinetuneConfig, FineTuner

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    missing = [k for k in extra if k not in fields]
    if missing:
        raise KeyError(", ".join(missing))
    cfg = FinetuneConfig(epochs=1, head_init="random", wise="off", bn_policy="train", **extra)
    res = FineTuner(cfg, progress=False).fit(train, val, classes)
    return res.train_images_per_second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/hymenoptera")
    ap.add_argument("--n", type=int, default=128, help="training images (first n of train)")
    ap.add_argument("--batch-size", type=int, default=32, help="the naive loop's batch")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"SKIP: {args.data} not found (needs ../shared/datasets)")
        sys.exit(0)

    from transferlab.data import load_dataset

    ds = load_dataset(args.data)
    train = sorted(ds.train, key=lambda s: s.path)[:: max(1, len(ds.train) // args.n)][: args.n]
    val = sorted(ds.val, key=lambda s: s.path)[:16]
    classes = list(ds.classes)
    print(f"machine: {os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"images: {len(train)} train from {args.data}, lite0 at 224 px")
    rows: dict[str, float | str] = {}
    rows["naive (NCHW fp32, batch 32)"] = _naive(
        [s.path for s in train], [classes.index(s.label) for s in train], args.batch_size
    )
    rows["transferlab fp32"] = _transferlab(train, val, classes)
    try:
        rows["transferlab bf16 autocast"] = _transferlab(train, val, classes, precision="bf16")
    except KeyError:
        rows["transferlab bf16 autocast"] = "n/a (no precision option)"
    print()
    print(f"{'path':34s} {'train img/s':>12s}")
    for name, v in rows.items():
        print(f"{name:34s} {v:>12.1f}" if isinstance(v, float) else f"{name:34s} {v:>12s}")
    naive = rows["naive (NCHW fp32, batch 32)"]
    best = max(v for v in rows.values() if isinstance(v, float) and v is not naive)
    print()
    print(f"finetune_speedup_vs_naive={best / naive:.2f}")  # type: ignore[operator]
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
