"""Domain gap between target images and a reference set of natural photos.

Three views, from pixels up: image-level statistics (colour or greyscale, channel means and
spreads, resolution, aspect ratio); per layer, how well a linear classifier tells target from
reference features (the proxy A-distance of Ben-David et al. 2007) and a kernel two-sample
distance (MMD, Gretton et al. 2012); and, in `_bn`, the shift of BatchNorm statistics. A gap that
is already large at the stem means low-level statistics differ (greyscale x-rays, sketches); a
gap that only opens in the last stages means the content differs, which is what transfer is for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transferlab.data import load_image
from transferlab.exceptions import ImageLoadError, InvalidParameterError

__all__ = [
    "DomainGap",
    "ImageStats",
    "default_reference",
    "domain_classifier_accuracy",
    "domain_gap",
    "image_statistics",
    "mmd_rbf",
]

REFERENCE_VERSION = "v1"


def _reference_photos() -> list[tuple[str, np.ndarray]]:
    """Colour photos of everyday scenes that ship with our dependencies (no download)."""
    import matplotlib
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos: list[tuple[str, np.ndarray]] = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photos.append((f"skimage-{name}", getattr(skimage.data, name)()))
    left, right, _ = skimage.data.stereo_motorcycle()
    photos += [("skimage-motorcycle-left", left), ("skimage-motorcycle-right", right)]
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images, strict=True):
        photos.append((f"sklearn-{Path(fname).stem}", img))
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.is_file():
        photos.append(("matplotlib-grace_hopper", np.asarray(Image.open(hopper).convert("RGB"))))
    return photos


def default_reference(directory: str | os.PathLike[str] | None = None, crops: int = 6) -> list[str]:
    """The built-in reference set: crops of the natural photos bundled with scikit-image,
    scikit-learn and matplotlib, written once under the cache directory as JPEG.

    Each photo gives the whole frame plus `crops - 1` seeded random crops (30-80 % of the side,
    some mirrored), so the set has the variety of framing a photo collection has.
    """
    from transferlab.features import default_cache_dir

    root = Path(directory) if directory else default_cache_dir() / "reference" / REFERENCE_VERSION
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f"complete-{crops}"
    if marker.exists():
        return sorted(str(p) for p in root.glob("*.jpg"))
    rng = np.random.default_rng(0)
    for name, arr in _reference_photos():
        img = Image.fromarray(arr).convert("RGB")
        w, h = img.size
        img.save(root / f"{name}-0.jpg", quality=92)
        for k in range(1, crops):
            frac = rng.uniform(0.3, 0.8)
            cw, ch = int(w * frac), int(h * frac)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = img.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(root / f"{name}-{k}.jpg", quality=92)
    marker.touch()
    return sorted(str(p) for p in root.glob("*.jpg"))


@dataclass
class ImageStats:
    """Image-level statistics of a set of images (pixels in [0, 1], RGB after conversion).

    Attributes:
        n: images read; failures: paths that could not be read, with the reason.
        greyscale_fraction: share of images with no colour (greyscale modes, or R = G = B).
        channel_mean, channel_std: per RGB channel, over all pixels of all images.
        width, height, aspect: medians (aspect = width / height); min_side: smallest side's median.
        modes: PIL mode -> count.
    """

    n: int
    greyscale_fraction: float
    channel_mean: list[float]
    channel_std: list[float]
    width: float
    height: float
    min_side: float
    aspect: float
    modes: dict[str, int]
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "greyscale_fraction": round(self.greyscale_fraction, 4),
            "channel_mean": [round(v, 4) for v in self.channel_mean],
            "channel_std": [round(v, 4) for v in self.channel_std],
            "median_width": self.width,
            "median_height": self.height,
            "median_min_side": self.min_side,
            "median_aspect": round(self.aspect, 3),
            "modes": self.modes,
            "n_failures": len(self.failures),
        }


def image_statistics(paths: Sequence[str | os.PathLike[str]], max_images: int = 500) -> ImageStats:
    """Colour, intensity and size statistics of (up to `max_images` evenly spaced) images.

    Pixels are read from a thumbnail of at most 64 px a side, which is all the means need.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise InvalidParameterError("image_statistics needs at least one image path")
    step = max(1, len(paths) // max_images)
    chosen = paths[::step][:max_images]
    sums, sqs, npx = np.zeros(3), np.zeros(3), 0
    grey, widths, heights, modes = 0, [], [], {}
    failures: list[str] = []
    for p in chosen:
        try:
            with Image.open(p) as raw:
                mode, size = raw.mode, raw.size
            img = load_image(p, draft_size=64)
        except (ImageLoadError, OSError) as exc:
            failures.append(f"{p}: {exc}")
            continue
        img.thumbnail((64, 64))
        arr = np.asarray(img, dtype=np.float64) / 255.0
        modes[mode] = modes.get(mode, 0) + 1
        widths.append(size[0])
        heights.append(size[1])
        flat = arr.reshape(-1, 3)
        sums += flat.sum(0)
        sqs += (flat**2).sum(0)
        npx += flat.shape[0]
        if (
            mode in ("L", "LA", "I", "I;16", "1", "F")
            or np.abs(flat - flat.mean(1, keepdims=True)).max() < 2 / 255
        ):
            grey += 1
    n = len(widths)
    if n == 0:
        raise InvalidParameterError(
            f"none of the {len(chosen)} images could be read: {failures[0]}"
        )
    mean = sums / npx
    std = np.sqrt(np.maximum(sqs / npx - mean**2, 0))
    w, h = np.asarray(widths, float), np.asarray(heights, float)
    return ImageStats(
        n=n,
        greyscale_fraction=grey / n,
        channel_mean=mean.tolist(),
        channel_std=std.tolist(),
        width=float(np.median(w)),
        height=float(np.median(h)),
        min_side=float(np.median(np.minimum(w, h))),
        aspect=float(np.median(w / h)),
        modes=modes,
        failures=failures,
    )


def domain_classifier_accuracy(
    target: np.ndarray, reference: np.ndarray, *, cv: int = 5, seed: int = 0
) -> float:
    """Cross-validated balanced accuracy of a linear classifier telling target from reference.

    0.5 means the two sets are indistinguishable by a linear read-out of these features; 1.0
    means perfectly separable. Features are standardised; classes are weighted so the usually
    smaller reference set counts as much as the target.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if target.ndim != 2 or reference.ndim != 2 or target.shape[1] != reference.shape[1]:
        raise InvalidParameterError(
            f"target and reference must be 2-D with the same width, got {target.shape} and "
            f"{reference.shape}"
        )
    n_min = min(len(target), len(reference))
    if n_min < 2:
        raise InvalidParameterError(
            "the domain classifier needs at least 2 target and 2 reference images"
        )
    X = np.vstack([target, reference]).astype(np.float64)
    y = np.r_[np.ones(len(target)), np.zeros(len(reference))]
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000)
    )
    folds = StratifiedKFold(n_splits=min(cv, n_min), shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, X, y, cv=folds, scoring="balanced_accuracy")))


def mmd_rbf(x: np.ndarray, y: np.ndarray, *, max_samples: int = 500, seed: int = 0) -> float:
    """Unbiased squared MMD with a Gaussian kernel (median-distance bandwidth).

    Features are scaled by the pooled standard deviation per dimension first, so layers of
    different widths and magnitudes give comparable numbers; 0 means same distribution.
    """
    rng = np.random.default_rng(seed)
    if len(x) > max_samples:
        x = x[rng.choice(len(x), max_samples, replace=False)]
    if len(y) > max_samples:
        y = y[rng.choice(len(y), max_samples, replace=False)]
    if len(x) < 2 or len(y) < 2:
        raise InvalidParameterError("MMD needs at least 2 samples on each side")
    z = np.vstack([x, y]).astype(np.float64)
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    sq = np.sum(z**2, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    off = d2[~np.eye(len(z), dtype=bool)]
    bandwidth = np.median(off) or 1.0
    k = np.exp(-d2 / bandwidth)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


@dataclass
class DomainGap:
    """Per layer: domain-classifier accuracy, proxy A-distance and MMD between target and reference.

    Attributes:
        layers: tap names, shallow to deep.
        classifier_accuracy: balanced accuracy of the target-vs-reference classifier.
        a_distance: 2 (1 - 2 err) with err = 1 - accuracy, clipped to [0, 2].
        mmd: squared MMD (Gaussian kernel) on standardised features.
        n_target, n_reference: images on each side.
    """

    layers: list[str]
    classifier_accuracy: list[float]
    a_distance: list[float]
    mmd: list[float]
    n_target: int
    n_reference: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_target": self.n_target,
            "n_reference": self.n_reference,
            "layers": {
                layer: {
                    "classifier_accuracy": round(acc, 4),
                    "a_distance": round(a, 4),
                    "mmd": round(m, 5),
                }
                for layer, acc, a, m in zip(
                    self.layers, self.classifier_accuracy, self.a_distance, self.mmd, strict=True
                )
            },
        }


def domain_gap(
    target: dict[str, np.ndarray], reference: dict[str, np.ndarray], *, seed: int = 0
) -> DomainGap:
    """Domain gap per layer from features of the target and of the reference (same layer keys)."""
    layers = [la for la in target if la in reference]
    if not layers:
        raise InvalidParameterError("target and reference features share no layer")
    accs, ads, mmds = [], [], []
    for layer in layers:
        acc = domain_classifier_accuracy(target[layer], reference[layer], seed=seed)
        accs.append(acc)
        ads.append(float(np.clip(2 * (1 - 2 * (1 - acc)), 0, 2)))
        mmds.append(mmd_rbf(target[layer], reference[layer], seed=seed))
    return DomainGap(
        layers=layers,
        classifier_accuracy=accs,
        a_distance=ads,
        mmd=mmds,
        n_target=len(next(iter(target.values()))),
        n_reference=len(next(iter(reference.values()))),
    )
