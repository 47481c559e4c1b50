"""Few-shot learning curves: how many labelled images per class transfer needs, against baselines
that learn from scratch on the same draws.

For each shot count k and each repeat, k training images per class are drawn at random (the same
draw for every method); each method trains on the draw and is scored on the whole validation split:

* ``transfer``: a `LinearProbe` on pretrained features (cached, so only the probe is refit);
* ``pixels``: logistic regression on raw pixels downsampled to 32x32;
* ``scratch_cnn``: a small CNN trained from random weights on 64x64 images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferlab._internal.progress import progress as _progress
from transferlab.data import stratified_subsample
from transferlab.exceptions import InvalidParameterError

__all__ = ["LearningCurve", "learning_curve", "parse_shots"]

logger = logging.getLogger(__name__)

METHODS = ("transfer", "pixels", "scratch_cnn")


def parse_shots(text: str) -> list[int | str]:
    """``"1,2,5,all"`` -> ``[1, 2, 5, "all"]`` (validated)."""
    out: list[int | str] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "all":
            out.append("all")
            continue
        try:
            k = int(part)
        except ValueError:
            raise InvalidParameterError(
                f"--shots takes positive integers and 'all', got {part!r}"
            ) from None
        if k < 1:
            raise InvalidParameterError(f"--shots values must be >= 1, got {k}")
        out.append(k)
    if not out:
        raise InvalidParameterError("--shots is empty")
    return out


@dataclass
class LearningCurve:
    """Accuracy per method and shot count (mean and std over repeats).

    Attributes:
        shots: shot counts, ``"all"`` last if asked (its number of images per class in `n_per_class`).
        n_per_class: images per class used at each shot count (mean over classes for ``"all"``).
        scores: method -> list (per shot) of per-repeat accuracies.
        summary: plain sentences: where transfer matches the baselines' best.
    """

    shots: list[int | str]
    n_per_class: list[float]
    scores: dict[str, list[list[float]]]
    repeats: int
    n_val: int
    summary: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def mean(self, method: str) -> np.ndarray:
        return np.array([np.mean(s) for s in self.scores[method]])

    def std(self, method: str) -> np.ndarray:
        return np.array([np.std(s) for s in self.scores[method]])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = {m: self.mean(m).tolist() for m in self.scores}
        d["std"] = {m: self.std(m).tolist() for m in self.scores}
        return d

    def plot(self, ax: Any = None) -> Any:
        """Mean ± std accuracy against images per class (log scale); returns the axes."""
        from transferlab._internal.plotting import pyplot as _pyplot

        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
        x = np.asarray(self.n_per_class)
        labels = {
            "transfer": "transfer: linear probe on pretrained features",
            "pixels": "scratch: logistic regression on pixels",
            "scratch_cnn": "scratch: small CNN",
        }
        for i, m in enumerate(self.scores):
            mu, sd = self.mean(m), self.std(m)
            ax.plot(x, mu, "o-", color=f"C{i}", label=labels.get(m, m))
            ax.fill_between(x, mu - sd, mu + sd, color=f"C{i}", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels(
            [
                str(s) if s != "all" else f"all\n({n:.0f})"
                for s, n in zip(self.shots, x, strict=True)
            ]
        )
        ax.set_xlabel("labelled training images per class")
        ax.set_ylabel(f"validation accuracy (n={self.n_val})")
        ax.set_title(f"learning curves (mean ± std over {self.repeats} draws)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        return ax


def _draw(y: np.ndarray, k: int | str, rng: np.random.Generator) -> np.ndarray:
    """Indices (ascending) of k random examples per class (all of a class with fewer)."""
    return np.sort(stratified_subsample(y, per_class=None if k == "all" else int(k), seed=rng))


def _train_small_cnn(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int, epochs: int) -> Any:
    """A 4-block CNN from scratch, with flips and random crops; enough steps even for tiny draws."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    widths = [(3, 32), (32, 64), (64, 128), (128, 128)]
    blocks: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(widths):  # conv-BN-ReLU, halving the size but at the end
        blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        blocks += [nn.MaxPool2d(2)] if i < len(widths) - 1 else []
    net = nn.Sequential(
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(128, n_classes),
    )
    xt = torch.as_tensor(x)
    yt = torch.as_tensor(y)
    steps = max(
        5 * epochs, epochs * int(np.ceil(len(y) / 32))
    )  # tiny draws still get 5 steps/epoch
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        b = torch.randint(0, len(yt), (min(32, len(yt)),), generator=g)
        xb = xt[b]
        if torch.rand(1, generator=g).item() < 0.5:
            xb = torch.flip(xb, dims=[3])
        dx, dy = torch.randint(0, 9, (2,), generator=g).tolist()
        xb = nn.functional.pad(xb, (4, 4, 4, 4), mode="reflect")[:, :, dy : dy + 64, dx : dx + 64]
        loss = nn.functional.cross_entropy(net(xb), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def _pixels(paths: Sequence[str], size: int, max_pixels: int | None) -> np.ndarray:
    from transferlab.data import load_image

    out = np.zeros((len(paths), 3, size, size), np.float32)
    for i, p in enumerate(paths):
        img = load_image(p, max_pixels=max_pixels, draft_size=size * 2).resize((size, size))
        out[i] = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
    return out


def learning_curve(
    X_train: np.ndarray,
    y_train: Sequence[str],
    X_val: np.ndarray,
    y_val: Sequence[str],
    *,
    train_paths: Sequence[str] | None = None,
    val_paths: Sequence[str] | None = None,
    shots: Sequence[int | str] = (1, 2, 5, 10, 20, "all"),
    repeats: int = 5,
    methods: Sequence[str] = METHODS,
    cnn_epochs: int = 30,
    seed: int = 0,
    max_pixels: int | None = None,
    progress: bool = True,
) -> LearningCurve:
    """Score transfer and from-scratch baselines on random k-shot draws (see module docstring).

    `X_*` are pretrained features; the baselines need the image `*_paths`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferlab.probe import LinearProbe

    t0 = time.perf_counter()
    if repeats < 1:
        raise InvalidParameterError(f"repeats must be >= 1, got {repeats}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InvalidParameterError(f"methods must be among {', '.join(METHODS)}, got {bad}")
    if any(m != "transfer" for m in methods) and (train_paths is None or val_paths is None):
        raise InvalidParameterError("the from-scratch baselines need train_paths and val_paths")
    ytr = np.asarray(y_train).astype(str)
    yva = np.asarray(y_val).astype(str)
    classes = sorted(set(ytr))
    cls_idx = {c: i for i, c in enumerate(classes)}
    ytr_i = np.array([cls_idx[c] for c in ytr])
    yva_i = np.array([cls_idx.get(c, -1) for c in yva])
    shots = sorted([s for s in shots if s != "all"]) + (["all"] if "all" in shots else [])
    pix_tr = pix_va = img_tr = img_va = None
    if "pixels" in methods:
        pix_tr = _pixels(train_paths, 32, max_pixels).reshape(len(ytr), -1)  # type: ignore[arg-type]
        pix_va = _pixels(val_paths, 32, max_pixels).reshape(len(yva), -1)  # type: ignore[arg-type]
    if "scratch_cnn" in methods:
        img_tr = _pixels(train_paths, 64, max_pixels)  # type: ignore[arg-type]
        img_va = _pixels(val_paths, 64, max_pixels)  # type: ignore[arg-type]
        mean, std = (
            img_tr.mean(axis=(0, 2, 3), keepdims=True),
            img_tr.std(axis=(0, 2, 3), keepdims=True) + 1e-6,
        )
        img_tr, img_va = (img_tr - mean) / std, (img_va - mean) / std
    scores: dict[str, list[list[float]]] = {m: [] for m in methods}
    n_per_class: list[float] = []
    with _progress(len(shots) * repeats, "learning curve", progress, unit="draw") as bar:
        for k in shots:
            reps = 1 if k == "all" else repeats
            per_rep: dict[str, list[float]] = {m: [] for m in methods}
            sizes = []
            for r in range(reps):
                rng = np.random.default_rng([seed, r, 0 if k == "all" else int(k)])
                idx = _draw(ytr_i, k, rng)
                sizes.append(len(idx) / len(classes))
                if "transfer" in methods:
                    probe = LinearProbe().fit(X_train[idx], ytr[idx])
                    per_rep["transfer"].append(float(np.mean(probe.predict(X_val) == yva)))
                if "pixels" in methods:
                    lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
                    lr.fit(pix_tr[idx], ytr_i[idx])  # type: ignore[index]
                    per_rep["pixels"].append(float(np.mean(lr.predict(pix_va) == yva_i)))
                if "scratch_cnn" in methods:
                    import torch

                    x_cnn = img_tr[idx]  # type: ignore[index]
                    net = _train_small_cnn(x_cnn, ytr_i[idx], len(classes), seed + r, cnn_epochs)
                    with torch.inference_mode():
                        pred = net(torch.as_tensor(img_va)).argmax(1).numpy()
                    per_rep["scratch_cnn"].append(float(np.mean(pred == yva_i)))
                bar.update(repeats if k == "all" else 1)
            for m in methods:
                scores[m].append(per_rep[m])
            n_per_class.append(float(np.mean(sizes)))
    curve = LearningCurve(
        shots=list(shots),
        n_per_class=n_per_class,
        scores=scores,
        repeats=repeats,
        n_val=len(yva),
        seconds=round(time.perf_counter() - t0, 2),
    )
    curve.summary = _summarise(curve)
    return curve


def _summarise(curve: LearningCurve) -> list[str]:
    if "transfer" not in curve.scores:
        return []
    lines = []
    t = curve.mean("transfer")
    baselines = [m for m in curve.scores if m != "transfer"]
    if not baselines:
        return [f"transfer reaches {t[-1]:.3f} with {curve.n_per_class[-1]:.0f} images per class"]
    best_m = max(baselines, key=lambda m: curve.mean(m).max())
    best = float(curve.mean(best_m).max())
    at = curve.n_per_class[int(np.argmax(curve.mean(best_m)))]
    match = next((curve.n_per_class[i] for i in range(len(t)) if t[i] >= best), None)
    if match is None:
        lines.append(
            f"Transfer never matched the best from-scratch result ({best_m}: {best:.3f} with {at:.0f} images "
            "per class) on this data: the pretrained features do not suit it; consider fine-tuning."
        )
    else:
        lines.append(
            f"Transfer needs {match:.0f} labelled image(s) per class to match the best from-scratch result "
            f"({best_m}: {best:.3f}, reached with {at:.0f} per class)."
        )
    for i, s in enumerate(curve.shots):
        if s in (1, 5):
            gap = t[i] - max(curve.mean(m)[i] for m in baselines)
            lines.append(
                f"At {s} shot(s): transfer {t[i]:.3f} vs best scratch baseline "
                f"{max(curve.mean(m)[i] for m in baselines):.3f} ({100 * gap:+.1f} points)."
            )
    return lines
