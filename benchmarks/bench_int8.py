"""INT8 (ONNX Runtime static quantisation) against fp32 for lite0 pre_logits features (issue 17).

    python benchmarks/bench_int8.py --sweep            # choose the recipe on hymenoptera/trashnet train
    python benchmarks/bench_int8.py                    # the chosen recipe on all four datasets + speed

The sweep calibrates on training images and scores on *other* training images (held out from
calibration), so no validation or test image takes part in a choice. The final run calibrates on
each dataset's training images, then reports cosine to fp32 and linear-probe accuracy (probe
trained on that engine's train features) on val, and on test for pneumoniamnist, and model-only
speed of the dynamic-padding fp32 graph, the static one and int8, side by side in one process.
Preprocessed images are cached in --work (float32 .npy, memory-mapped).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
NAMES = ("hymenoptera", "trashnet", "aid_rs10", "pneumoniamnist")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    keep = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), ""
    )
    return f"{model}; {' '.join(sorted(keep))}"


def export_graphs(work: Path) -> tuple[Path, Path]:
    """lite0 pre_logits exported twice: TF-'same' padding at run time (as OnnxTaps today) and static."""
    import torch

    from transferlab.backbones import _TapGraph, load_backbone
    from transferlab.backbones._static_pad import simplify_onnx, static_padding

    dyn, sta = work / "lite0_dynamic.onnx", work / "lite0_static.onnx"
    if dyn.exists() and sta.exists():
        return dyn, sta
    bb = load_backbone("efficientnet_lite0")
    bb.model.to(memory_format=torch.contiguous_format)
    size = list(bb.data_config["input_size"])

    def export(path: Path) -> None:
        graph = _TapGraph(bb, ["pre_logits"], "avg").eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (torch.zeros(2, *size),), str(path), dynamo=False,
                input_names=["image"], output_names=["pre_logits"],
                dynamic_axes={"image": {0: "batch"}, "pre_logits": {0: "batch"}}, opset_version=17,
            )  # fmt: skip

    export(dyn)
    with static_padding(bb.model, size):
        export(sta)
    simplify_onnx(sta)
    return dyn, sta


def preprocessed(work: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images N x 3 x 224 x 224 float32 memmap, labels) of one split, cached."""
    folder = DATASETS / name / split
    if not folder.is_dir():
        return None
    x_path, y_path = work / f"{name}_{split}_x.npy", work / f"{name}_{split}_y.npy"
    if not x_path.exists():
        import torch

        from transferlab.backbones import load_backbone
        from transferlab.data import list_images, load_image

        tf = load_backbone("efficientnet_lite0").transform()
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        files = [(f, c) for c in classes for f in list_images(folder / c)[0]]
        x = np.lib.format.open_memmap(
            str(x_path) + ".tmp.npy", "w+", np.float32, (len(files), 3, 224, 224)
        )
        with torch.no_grad():
            for i, (f, _) in enumerate(files):
                x[i] = tf(load_image(f)).numpy()
        x.flush()
        del x
        os.replace(str(x_path) + ".tmp.npy", x_path)
        np.save(y_path, np.array([classes.index(c) for _, c in files]))
    return np.load(x_path, mmap_mode="r"), np.load(y_path)


def batches(x: np.ndarray, idx: np.ndarray, bs: int = 32):
    for i in range(0, len(idx), bs):
        yield np.ascontiguousarray(x[np.sort(idx[i : i + bs])])


def features(sess, x: np.ndarray, bs: int = 32) -> np.ndarray:
    return np.concatenate(
        [
            sess.run(None, {"image": np.ascontiguousarray(x[i : i + bs])})[0]
            for i in range(0, len(x), bs)
        ]
    )


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def calib_split(
    y: np.ndarray, n_calib: int, n_hold: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled training indices: the first n_calib calibrate, the last n_hold are held out."""
    perm = np.random.default_rng(seed).permutation(len(y))
    hold = perm[len(perm) - n_hold :] if n_hold else perm[:0]
    return perm[: min(n_calib, len(perm) - n_hold)], hold


SWEEP = [
    # (label, kwargs); "graph": "dynamic" quantises the dynamic-padding export instead
    ("minmax pc, dynamic-pad graph", {"method": "minmax", "graph": "dynamic"}),
    ("minmax per-tensor, dynamic-pad graph", {"method": "minmax", "per_channel": False, "graph": "dynamic"}),
    ("minmax pc", {"method": "minmax"}),
    ("entropy pc", {"method": "entropy"}),
    ("pct99.99 pc", {"method": "percentile", "percentile": 99.99}),
    ("pct99.999 pc", {"method": "percentile", "percentile": 99.999}),
    ("pct99.999 per-tensor", {"method": "percentile", "percentile": 99.999, "per_channel": False}),
    ("pct99.999 pc reduce_range", {"method": "percentile", "percentile": 99.999, "reduce_range": True}),
    ("pct99.999 pc s8 act", {"method": "percentile", "percentile": 99.999, "activation_type": "int8"}),
    ("pct99.999 pc keep first_conv", {"method": "percentile", "percentile": 99.999, "keep_float": ["first_conv"]}),
    ("pct99.999 pc keep last_conv+GAP", {"method": "percentile", "percentile": 99.999, "keep_float": ["last_conv", "GlobalAveragePool"]}),
    ("minmax pc keep first_convs:3", {"method": "minmax", "keep_float": ["first_convs:3"]}),
    ("minmax pc keep first_convs:9", {"method": "minmax", "keep_float": ["first_convs:9"]}),
    ("pct99.999 pc keep first_convs:9", {"method": "percentile", "percentile": 99.999, "keep_float": ["first_convs:9"]}),
    ("entropy pc keep first_convs:9", {"method": "entropy", "keep_float": ["first_convs:9"]}),
]  # fmt: skip


def run_sweep(args, work: Path, dyn: Path, sta: Path) -> None:
    from transferlab.backbones._quantize import measure_fidelity, quantize_static_int8

    s32 = session(sta, args.threads)
    labels = [lab for lab, _ in SWEEP] if not args.only else args.only
    for name in args.sweep_data:
        tr = preprocessed(work, name, "train")
        if tr is None:
            print(f"{name}: skipped (no {DATASETS / name / 'train'})")
            continue
        x, y = tr
        print(
            f"\n## sweep on {name} train ({len(y)} images): calibrate on N, score on {args.hold} held-out train images"
        )
        for n_calib in args.calib:
            cal, hold = calib_split(y, n_calib, args.hold)
            for label, kw in SWEEP:
                if label not in labels or (n_calib != args.calib[0] and label != args.calib_label):
                    continue
                out = work / f"sweep_{name}.onnx"
                t = time.perf_counter()
                kw = dict(kw)
                src = dyn if kw.pop("graph", "static") == "dynamic" else sta
                res = quantize_static_int8(src, out, batches(x, cal, 16), **kw)
                fid = measure_fidelity(s32, out, batches(x, hold), threads=args.threads)
                print(
                    f"| {name} | {label} | {res.calibration_images} | {fid.mean_cosine['pre_logits']:.4f} | "
                    f"{fid.min_cosine['pre_logits']:.4f} | {res.quantized_nodes} | {time.perf_counter() - t:.0f}s |",
                    flush=True,
                )


def timed(sess, x: np.ndarray, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        out.append(len(x) / (time.perf_counter() - t))
    return out


def run_final(args, work: Path, dyn: Path, sta: Path) -> None:
    from transferlab.backbones._quantize import measure_fidelity, quantize_static_int8
    from transferlab.probe import LinearProbe

    kw = dict(SWEEP)[args.recipe]
    s32 = session(sta, args.threads)
    print(
        f"\n## recipe: {args.recipe} {kw}, calibration on {args.final_calib} shuffled train images"
    )
    print(
        "| dataset | split | images | mean cos | min cos | probe fp32 | probe int8 | delta (pt) "
        "| fp32 probe on int8 feats | agreement |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    last_int8 = None
    for name in args.data:
        tr = preprocessed(work, name, "train")
        if tr is None:
            print(f"| {name} | skipped: no {DATASETS / name / 'train'} |")
            continue
        xtr, ytr = tr
        cal, _ = calib_split(ytr, args.final_calib, 0)
        int8 = work / f"lite0_int8_{name}.onnx"
        res = quantize_static_int8(sta, int8, batches(xtr, cal, 16), **kw)
        s8 = session(int8, args.threads)
        f32_tr, f8_tr = features(s32, xtr), features(s8, xtr)
        p32 = LinearProbe().fit(f32_tr, ytr)
        p8 = LinearProbe().fit(f8_tr, ytr)
        for split in ("val", "test"):
            ev = preprocessed(work, name, split)
            if ev is None:
                continue
            xe, ye = ev
            fid = measure_fidelity(s32, s8, batches(xe, np.arange(len(ye))))
            fe32, fe8 = features(s32, xe), features(s8, xe)
            pred32, pred8 = p32.predict(fe32), p8.predict(fe8)
            a32, a8 = float((pred32 == ye).mean()), float((pred8 == ye).mean())
            cross = float((p32.predict(fe8) == ye).mean())  # a fp32-trained probe fed int8 features
            agree = float((pred32 == pred8).mean())
            print(
                f"| {name} | {split} | {len(ye)} | {fid.mean_cosine['pre_logits']:.4f} | "
                f"{fid.min_cosine['pre_logits']:.4f} | {a32:.4f} | {a8:.4f} | {100 * (a8 - a32):+.2f} "
                f"| {cross:.4f} | {agree:.4f} |",
                flush=True,
            )
        print(f"<!-- {name}: {res.to_dict()} -->")
        last_int8 = int8
    if last_int8 is None or args.speed_rounds == 0:
        return
    xs = np.ascontiguousarray(
        np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32)
    )
    sessions = {
        "fp32 dynamic pad (today)": session(dyn, args.threads),
        "fp32 static pad": s32,
        f"int8 static pad ({args.recipe})": session(last_int8, args.threads),
    }
    tr = preprocessed(work, args.data[0], "train")
    assert tr is not None
    cal, _ = calib_split(tr[1], 64, 0)
    extra = {f"int8 static pad, keep {k or 'nothing'} float": k for k in args.speed_keep}
    if args.int8_dynamic:
        extra["int8 dynamic pad (recipe)"] = None
    for label, keep in extra.items():
        path = work / f"speed_{len(sessions)}.onnx"
        opts = {k: v for k, v in kw.items() if k != "keep_float"}
        if keep is None:
            quantize_static_int8(dyn, path, batches(tr[0], cal, 16), **kw)
        else:
            quantize_static_int8(
                sta, path, batches(tr[0], cal, 16), **opts, keep_float=[keep] if keep else []
            )
        sessions[label] = session(path, args.threads)
    for s in sessions.values():
        s.run(None, {"image": xs})  # warm-up
    speeds: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.speed_rounds):  # interleaved, so a noisy neighbour hits all alike
        for k, s in sessions.items():
            speeds[k] += timed(s, xs, 1)
    base = statistics.median(speeds["fp32 dynamic pad (today)"])
    print(
        f"\n## model-only speed, batch 32, {args.threads} thread(s), median of {args.speed_rounds} interleaved rounds"
    )
    print("| graph | img/s | vs fp32 today |\n|---|---|---|")
    for k, v in speeds.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.1f} | {m / base:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", default="/tmp/transferlab_bench_int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep", action="store_true", help="compare recipes on training images only")
    ap.add_argument("--sweep-data", nargs="+", default=["hymenoptera"])
    ap.add_argument("--only", nargs="+", default=None, help="sweep only these labels")
    ap.add_argument(
        "--calib", type=int, nargs="+", default=[128], help="calibration sizes to sweep"
    )
    ap.add_argument("--calib-label", default="pct99.999 pc", help="recipe swept over --calib sizes")
    ap.add_argument(
        "--hold", type=int, default=64, help="held-out training images scored in the sweep"
    )
    ap.add_argument("--data", nargs="+", default=list(NAMES))
    ap.add_argument("--recipe", default="pct99.999 pc keep first_convs:9")
    ap.add_argument("--final-calib", type=int, default=256)
    ap.add_argument("--speed-rounds", type=int, default=7)
    ap.add_argument(
        "--speed-keep",
        nargs="*",
        default=["", "first_convs:3", "first_convs:9"],
        help="also time int8 with each of these keep_float tokens ('' = nothing kept)",
    )
    ap.add_argument(
        "--int8-dynamic", action="store_true", help="also time int8 of the dynamic-pad graph"
    )
    args = ap.parse_args()
    import onnxruntime as ort

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"# bench_int8: {platform.python_version()}, onnxruntime {ort.__version__}, {os.cpu_count()} cpus"
    )
    print(f"# cpu: {cpu_flags()}")
    dyn, sta = export_graphs(work)
    if args.sweep:
        print(
            "| data | recipe | calib imgs | mean cos | min cos | quantised nodes | time |\n|---|---|---|---|---|---|---|"
        )
        run_sweep(args, work, dyn, sta)
    else:
        run_final(args, work, dyn, sta)


if __name__ == "__main__":
    main()
