"""What `fit`, `finetune` and `auto` share for ``--target`` and ``--remedy`` (issue 22): the
target folder read and checked, the remedy chosen, and the note saying which images were used.

Inductive vs transductive: ``style`` learns from the training images only (the target is read
for its colourfulness, if given, to choose the remedy); ``coral`` and ``self-train`` learn from
the unlabelled target images, and a figure scored on those same images is transductive. The
note says which, and whether the target images are the validation images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.data import colourfulness, list_images
from transferlab.exceptions import DatasetError, DatasetNotFoundError, InvalidParameterError

if TYPE_CHECKING:
    from transferlab.data import Sample
    from transferlab.features import FeatureExtractor

__all__ = [
    "DomainNote",
    "adapted_probe",
    "drawn_val_advice",
    "load_target",
    "resolve_remedy",
    "style_features",
    "styled_samples",
]

#: at most this many target images are read (a seeded draw): enough for covariances and
#: pseudo-labels, bounded work on a big folder
MAX_TARGET_IMAGES = 2000


@dataclass
class DomainNote:
    """metrics.json ``domain``: the remedy applied, why, and which images it learnt from."""

    remedy: str
    chosen_by: str
    images_used: str
    target: str | None = None
    n_target: int = 0
    target_is_val: bool | None = None
    source_saturation: float | None = None
    target_saturation: float | None = None
    #: the same probe without the remedy, on the same validation images (side by side)
    plain_val_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        for k in ("source_saturation", "target_saturation", "plain_val_accuracy"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 4)
        return d


def load_target(target: str | os.PathLike[str], seed: int = 0) -> list[str]:
    """The image files under `target` (labels, if any, are ignored), at most
    `MAX_TARGET_IMAGES` of them; errors name the folder."""
    root = Path(target)
    if not root.exists():
        raise DatasetNotFoundError(f"target {root}: no such folder")
    paths = [root.as_posix()] if root.is_file() else list_images(root)[0]
    if len(paths) < 10:
        raise DatasetError(
            f"target {root}: domain adaptation needs at least 10 unlabelled images, found "
            f"{len(paths)}"
        )
    if len(paths) > MAX_TARGET_IMAGES:
        rng = np.random.default_rng(seed)
        idx = sorted(rng.choice(len(paths), MAX_TARGET_IMAGES, replace=False))
        paths = [paths[i] for i in idx]
    return paths


def resolve_remedy(
    remedy: str,
    train_paths: list[str],
    target_paths: list[str] | None,
    val_paths: list[str],
    target: str | None,
    *,
    allowed: tuple[str, ...],
) -> DomainNote:
    """The remedy to apply (``auto``: `choose_remedy` on the colourfulness of both sides) and
    the note for metrics.json; refuses a remedy that needs target images when none are given."""
    from transferlab.diagnose import choose_remedy

    source_sat = colourfulness(train_paths)
    target_sat = colourfulness(target_paths) if target_paths else None
    if remedy == "auto":
        choice = choose_remedy(source_sat, target_sat, have_target=bool(target_paths))
        name, why = choice.remedy, f"auto: {choice.reason}"
        if name not in allowed:
            name, why = "none", f"auto: {choice.reason}; {choice.remedy} is not available here"
    else:
        name, why = remedy, "asked for (--remedy)"
    if name in ("coral", "self-train") and not target_paths:
        raise InvalidParameterError(
            f"remedy {name!r} learns from unlabelled images of the other domain: give them "
            "with --target DIR (or use --remedy style, which needs none)"
        )
    is_val = None
    if target_paths:
        vals = {os.path.realpath(p) for p in val_paths}
        is_val = sum(os.path.realpath(p) in vals for p in target_paths) > len(target_paths) // 2
    if name in ("coral", "self-train"):
        used = f"transductive: the {len(target_paths or [])} target images were used unlabelled" + (
            ", and they are the validation images scored here" if is_val else ""
        )
    elif name == "style":
        used = "inductive: training images and their renderings only" + (
            " (the target images were read for their colour, to choose the remedy)"
            if target_paths and remedy == "auto"
            else ""
        )
    else:
        used = "inductive: training images only"
    return DomainNote(
        remedy=name,
        chosen_by=why,
        images_used=used,
        target=str(target) if target else None,
        n_target=len(target_paths or []),
        target_is_val=is_val,
        source_saturation=source_sat,
        target_saturation=target_sat,
    )


def style_features(
    fx: FeatureExtractor, train: list[Sample], X_train: np.ndarray, folder: Path
) -> tuple[np.ndarray, list[Any]]:
    """The training vectors with those of every training image's line and greyscale renderings
    (the ``style`` remedy), and their labels; renderings are kept under `folder`."""
    from transferlab.data import STYLES, render_styles

    paths = [s.path for s in train]
    rendered = render_styles(paths, list(STYLES), folder, max_pixels=fx.max_pixels)
    Xs, ys = [X_train], [s.label for s in train]
    for files in rendered.values():
        res = fx.extract(files, on_error="skip")
        Xs.append(res.features[fx.layer])
        ys += [train[i].label for i in res.index]
    return np.vstack(Xs), ys


def styled_samples(samples: list[Sample], folder: Path) -> list[Sample]:
    """Every sample's line and greyscale renderings, labelled as the sample (files under
    `folder`). A fine-tune with the ``style`` remedy selects its epoch on the validation
    images together with these: the photos alone cannot tell which epoch draws best, and no
    target label is used. Unreadable images are left out (the fine-tune reports them)."""
    from transferlab.data import STYLES, Sample, render_styles
    from transferlab.exceptions import ImageLoadError

    out: list[Sample] = []
    for s in samples:
        try:
            rendered = render_styles([s.path], list(STYLES), folder)
        except (ImageLoadError, OSError):
            continue
        out += [Sample(files[0], s.label) for files in rendered.values()]
    return out


def adapted_probe(
    note: DomainNote,
    fx: FeatureExtractor,
    train: list[Sample],
    X_train: np.ndarray,
    y_train: Any,
    target_paths: list[str] | None,
    style_folder: Path,
    make_probe: Any,
) -> Any:
    """The probe with `note`'s remedy applied (`fit` and `auto` alike): ``style`` fits
    ``make_probe()`` on the training vectors and their renderings', ``coral`` and
    ``self-train`` a `DomainAdaptedProbe` of the same settings with the target's vectors
    (`note.n_target` becomes the number that could be read), ``none`` the plain probe."""
    from transferlab.probe import DomainAdaptedProbe

    if note.remedy == "none":
        return make_probe().fit(X_train, y_train)
    if note.remedy == "style":
        X_style, y_style = style_features(fx, train, X_train, style_folder)
        return make_probe().fit(X_style, np.asarray(y_style, dtype=object))
    X_target = fx.extract(target_paths or [], on_error="skip").features[fx.layer]
    note.n_target = len(X_target)
    base = make_probe()
    return DomainAdaptedProbe(
        note.remedy, classifier=base.classifier, C=base.C, class_weight=base.class_weight
    ).fit(X_train, y_train, X_target=X_target)


def drawn_val_advice(ds: Any, command: str, *, target: Any, remedy: str) -> str | None:
    """When the validation images are colourless drawings of colour training photos, the
    remedy measured best for that (`choose_remedy`) as advice naming `command`. Advice only:
    a run's choices never read the split it reports, and these images were read for their
    colour alone. None otherwise: the run was given a `target` or a `remedy` other than
    ``auto`` (the user already chose), or a shift that keeps colour (`diagnose` sees it)."""
    from transferlab.diagnose import choose_remedy

    if target is not None or remedy != "auto" or not ds.val or ds.multi_label:
        return None
    # 64 evenly spaced thumbnails a side: well under a second, and a mean that settles
    source = colourfulness([s.path for s in ds.train], max_images=64)
    target = colourfulness([s.path for s in ds.val], max_images=64)
    choice = choose_remedy(source, target, have_target=False)
    if choice.remedy != "style":
        return None
    return (
        f"The validation images look like another domain than the training images: "
        f"{choice.reason}. If the images to predict look like them, run `{command}` (and "
        f"`transferlab diagnose {ds.root}` to measure the shift)."
    )
