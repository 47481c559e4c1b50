"""`training_views`: what a user looks at right after training, as fastai's interpretation
shows it: the confusion matrix, calibration, the top losses with their probabilities and an
embedding map of the validation images with the errors ringed.

One home for every training run (fit, finetune, auto), so their reports show the same plots as
`evaluate` does, drawn by the same code (`transferlab.report.evaluation_plots`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = ["MAP_POINTS", "VIEW_FILES", "training_views", "written_views"]

#: t-SNE is superlinear: the map shows at most this many images (a stratified, seeded draw)
MAP_POINTS = 1000

#: each view's file and caption ({split}: which images), in the order the report shows them
VIEW_FILES = (
    ("confusion_matrix.png", "Confusion matrix ({split})"),
    ("calibration.png", "Calibration: reliability and accuracy vs coverage ({split})"),
    ("top_losses.png", "Top losses, with their probabilities ({split})"),
    ("feature_map.png", "Embedding map (t-SNE, colour: true class, errors ringed; {split})"),
)

#: feature vectors of the images, or a function giving those of the given positions (so a
#: network computes only the map's sample); a row that could not be computed is NaN
Features = np.ndarray | Callable[[np.ndarray], np.ndarray]


def training_views(
    out: Path,
    paths: Sequence[str],
    labels: Sequence[str],
    raw_proba: np.ndarray,
    classes: Sequence[str],
    *,
    temperature: float = 1.0,
    features: Features | None = None,
    layer: str = "pre_logits",
    split: str = "validation",
    grid_size: int = 16,
) -> list[tuple[str, Path]]:
    """Draw the views of a trained classifier on its held-out images into `out`.

    Args:
        out: the run directory; the files are those of `VIEW_FILES`.
        paths, labels: the images scored and their true classes.
        raw_proba: uncalibrated probabilities, columns in `classes` order.
        temperature: the run's calibration temperature (the calibrated probabilities are shown;
            the reliability plot shows both).
        features: for the embedding map (see `Features`); None, or under 3 images: no map.
        layer: what the features are, for the map's title.
        split: which images, for the captions.
        grid_size: images in the top-losses grid.

    Returns:
        (caption, PNG path) of each view drawn, in report order.

    Raises:
        InvalidParameterError: `paths`, `labels` and `raw_proba` differ in length.
    """
    from transferlab.data import stratified_subsample
    from transferlab.evaluate import (
        Interpretation,
        TemperatureScaler,
        embed_2d,
        evaluate_predictions,
    )
    from transferlab.report import evaluation_plots, plot_feature_map

    raw = np.asarray(raw_proba, dtype=np.float64)
    if not len(paths) == len(labels) == len(raw):
        raise InvalidParameterError(
            f"training_views needs one label and one row of raw_proba per image, got "
            f"{len(paths)} paths, {len(labels)} labels and {len(raw)} rows"
        )
    proba = TemperatureScaler(temperature).transform(raw)
    interp = Interpretation.from_predictions(paths, labels, proba, classes)
    rep = evaluate_predictions([str(v) for v in labels], proba, list(classes))
    plots = evaluation_plots(
        out, interp, proba, raw, interp.y_true, rep, None, grid_size, split=split, examples=False
    )
    drawn = [p for _, p in plots]
    if features is not None and len(paths) >= 3:
        rows = np.sort(stratified_subsample(list(labels), MAP_POINTS, seed=0))
        X = features(rows) if callable(features) else np.asarray(features)[rows]
        ok = np.isfinite(X).all(axis=1)
        rows, X = rows[ok], X[ok]
        if len(rows) >= 3:
            wrong = interp.y_pred[rows] != interp.y_true[rows]
            true = [interp.classes[t] for t in interp.y_true[rows]]
            pts = embed_2d(X, "tsne")
            drawn.append(plot_feature_map(out / "feature_map.png", pts, true, wrong, layer))
    made = {p.name for p in drawn}
    return [(caption.format(split=split), out / f) for f, caption in VIEW_FILES if f in made]


def written_views(out: Path, split: str = "validation") -> list[tuple[str, Path]]:
    """The views `training_views` left in `out` (a run restored from its memo shows them
    again without drawing: no plotting library is imported)."""
    return [
        (caption.format(split=split), out / f) for f, caption in VIEW_FILES if (out / f).is_file()
    ]
