"""Fine-tuning speed, side by side in one run (issue 8 (d), issue 17 item 5): transferlab's
training loop against a naive fp32 NCHW PyTorch loop on the same JPEG files.

    python benchmarks/bench_finetune.py --data ../shared/datasets/hymenoptera --n 128 --rounds 2

Prints training images/s over the same `n` training images, lite0 at 224 px, in the last of
`--epochs` epochs (1: the first epoch, with oneDNN's one-off kernel set-up; 2: a warm epoch):

    naive                 timm model + torchvision transforms from JPEG + default DataLoader,
                          NCHW fp32, AdamW, batch 32, every layer trainable (BatchNorm training):
                          what a user writes; it is never changed
    all-trainable fp32    FineTuner, every layer and BatchNorm training, precision="fp32"
                          (channels-last, batch 16, images decoded once): the old comparison
    all-trainable auto    the same, precision="auto"
    default fp32          FineTuner's default recipe (bn_policy="freeze", freeze_to=0, batch 16),
                          precision="fp32"
    default auto          the default recipe as users run it, precision="auto" (bf16 autocast
                          with depthwise convolutions kept fp32 where the CPU does bf16
                          natively): the target row, `finetune_speedup_vs_naive`
    default plain bf16    the default recipe under plain bf16 autocast (every convolution bf16:
                          the policy before issue 17), where the CPU does bf16
    default freeze_to=2   the default recipe training from layer group 2 (stem and first stage
                          frozen: no weight gradients there, no backward below them)

The FineTuner rows start from a random head and skip WiSE (`head_init="random"`, `wise="off"`):
both happen outside the timed epoch. Their images/s count the training epoch only; the images
were decoded once before it (the loop's design), while the naive loop decodes every JPEG in its
epoch; `fit s` is the whole call (decode, epoch, validation of 16 images) for that reason.
Rounds repeat every row in the same order; on a shared machine compare within a round.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from typing import Any

import torch


def _cpu_flags() -> str:
    """The CPU's vector/matrix flags that decide bf16 speed (from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)


def _naive(
    paths: list[str], labels: list[int], batch_size: int, epochs: int
) -> tuple[float, float]:
    """What a user writes by hand, as in the PyTorch transfer-learning tutorial; training images
    per second of wall time and of process CPU time, in the last of `epochs` epochs."""
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
    for _ in range(epochs):
        t, c = time.perf_counter(), time.process_time()
        for x, y in torch.utils.data.DataLoader(DS(), batch_size=batch_size, shuffle=True):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return len(paths) / (time.perf_counter() - t), len(paths) / (time.process_time() - c)


def _transferlab(
    train: list,
    val: list,
    classes: list[str],
    *,
    epochs: int,
    plain_bf16: bool = False,
    **extra: Any,
) -> tuple[float, float, float, str]:
    """Training images/s (wall and process CPU time) of the last of `epochs` FineTuner epochs,
    the whole fit's seconds, and its precision. `plain_bf16`: every convolution under bf16 (the
    depthwise-in-fp32 policy switched off)."""
    from transferlab.finetune import Callback, FinetuneConfig, FineTuner

    class CPUTime(Callback):
        """Process CPU seconds of the training epoch (before_epoch to before_validate)."""

        def before_epoch(self, tuner: Any) -> None:
            self.start, self.images = time.process_time(), 0

        def after_batch(self, tuner: Any) -> None:
            self.images += len(tuner.yb)

        def before_validate(self, tuner: Any) -> None:
            self.seconds = time.process_time() - self.start

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    missing = [k for k in extra if k not in fields]
    if missing:
        raise KeyError(", ".join(missing))

    class Plain(FineTuner):
        def _setup(self, classes: Any) -> None:
            super()._setup(classes)
            self.fp32_depthwise_ = False

    cfg = FinetuneConfig(epochs=epochs, head_init="random", wise="off", **extra)
    cpu = CPUTime()
    tuner = (Plain if plain_bf16 else FineTuner)(cfg, callbacks=[cpu], progress=False)
    res = tuner.fit(train, val, classes)
    last = res.history[-1]["train_images_per_second"]
    return last, cpu.images / cpu.seconds, res.seconds, res.precision


ROWS: dict[str, dict[str, Any]] = {
    "all-trainable fp32": {"bn_policy": "train", "precision": "fp32"},
    "all-trainable auto": {"bn_policy": "train", "precision": "auto"},
    "default fp32": {"precision": "fp32"},
    "default auto": {"precision": "auto"},
    "default plain bf16": {"precision": "bf16", "plain_bf16": True},
    "default freeze_to=2": {"precision": "auto", "freeze_to": 2},
}
NAIVE = "naive"
TARGET = "default auto"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/hymenoptera")
    ap.add_argument("--n", type=int, default=128, help="training images (first n of train)")
    ap.add_argument("--batch-size", type=int, default=32, help="the naive loop's batch")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every row this many times")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument(
        "--epochs", type=int, default=1, help="epochs per row; the last one is timed (2: warm)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"SKIP: {args.data} not found (needs ../shared/datasets)")
        sys.exit(0)

    from transferlab.backbones import use_bf16
    from transferlab.data import load_dataset

    ds = load_dataset(args.data)
    step = max(1, len(ds.train) // args.n)
    train = sorted(ds.train, key=lambda s: s.path)[::step][: args.n]
    val = sorted(ds.val, key=lambda s: s.path)[:16]
    classes = list(ds.classes)
    if args.threads:
        torch.set_num_threads(args.threads)
    native = use_bf16("auto", torch.device("cpu"))
    rows = {k: v for k, v in ROWS.items() if not args.rows or k in args.rows.split(",")}
    if not native:  # emulated bf16: measured 11x slower (RESULTS.md, issue 8); not worth a row
        rows.pop("default plain bf16", None)
    print(f"machine: {os.cpu_count()} cpus, flags: {_cpu_flags()}, native bf16: {native}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"images: {len(train)} train (files sorted by path, one in {step}, the first {args.n})")
    print(f"from {args.data}, 16 val, efficientnet_lite0 at 224 px")
    labels = [classes.index(s.label) for s in train]
    for r in range(1, args.rounds + 1):
        got: dict[str, tuple[float, float, float | None, str]] = {}
        paths = [s.path for s in train]
        got[NAIVE] = (*_naive(paths, labels, args.batch_size, args.epochs), None, "fp32")
        for name, extra in rows.items():
            got[name] = _transferlab(train, val, classes, epochs=args.epochs, **extra)
        print()
        print(f"round {r} (img/s: wall; cpu: per process-CPU second, all threads)")
        head = ("path", "precision", "img/s", "x naive", "cpu img/s", "x naive", "fit s")
        print("{:22s} {:>9s} {:>8s} {:>8s} {:>10s} {:>8s} {:>7s}".format(*head))
        base, base_cpu = got[NAIVE][0], got[NAIVE][1]
        for name, (ips, cps, secs, prec) in got.items():
            fit = f"{secs:7.1f}" if secs is not None else f"{'':7s}"
            print(
                f"{name:22s} {prec:>9s} {ips:8.1f} {ips / base:8.2f} {cps:10.1f}"
                f" {cps / base_cpu:8.2f} {fit}"
            )
        if TARGET in got:
            wall, cpu = got[TARGET][0] / base, got[TARGET][1] / base_cpu
            print(f"finetune_speedup_vs_naive={wall:.2f} (round {r}, {TARGET}; cpu-time {cpu:.2f})")
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
