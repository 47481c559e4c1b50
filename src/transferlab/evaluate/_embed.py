"""2-D maps of feature space (t-SNE, UMAP) and nearest neighbours, to see what the features see."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = ["EMBED_METHODS", "EmbeddingDisplay", "embed_2d", "nearest_neighbours"]

EMBED_METHODS = ("tsne", "umap", "pca")


def embed_2d(
    X: np.ndarray, method: str = "tsne", *, seed: int = 0, max_iter: int = 500
) -> np.ndarray:
    """Project features to 2-D. Features are standardised and reduced to 50 PCA dimensions first
    (the usual preprocessing for t-SNE; it also makes UMAP faster).

    Raises:
        InvalidParameterError: unknown `method`, or UMAP asked for without umap-learn installed.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if method not in EMBED_METHODS:
        raise InvalidParameterError(
            f"method must be one of {', '.join(EMBED_METHODS)}, got {method!r}"
        )
    X = np.asarray(X, dtype=np.float64)
    if len(X) < 3:
        raise InvalidParameterError(f"a 2-D map needs at least 3 images, got {len(X)}")
    Z = StandardScaler().fit_transform(X)
    n_comp = min(50, Z.shape[0] - 1, Z.shape[1])
    Z = PCA(n_components=n_comp, random_state=seed).fit_transform(Z)
    if method == "pca":
        return Z[:, :2] if Z.shape[1] >= 2 else np.c_[Z, np.zeros(len(Z))]
    if method == "umap":
        try:
            import umap
        except ImportError as exc:
            raise InvalidParameterError(
                "UMAP needs umap-learn: pip install 'transferlab[umap]' (or use tsne)"
            ) from exc
        return umap.UMAP(
            n_components=2, random_state=seed, n_neighbors=min(15, len(Z) - 1)
        ).fit_transform(Z)
    from sklearn.manifold import TSNE

    # 500 iterations (sklearn's default is 1000): the map has settled by then, at half the cost
    return TSNE(
        n_components=2,
        random_state=seed,
        init="pca",
        perplexity=min(30.0, (len(Z) - 1) / 3),
        max_iter=max_iter,
    ).fit_transform(Z)


def nearest_neighbours(
    query: np.ndarray, reference: np.ndarray, k: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of each query row's k nearest reference rows."""
    q = query / (np.linalg.norm(query, axis=1, keepdims=True) + 1e-12)
    r = reference / (np.linalg.norm(reference, axis=1, keepdims=True) + 1e-12)
    sim = q @ r.T
    k = min(k, r.shape[0])
    idx = np.argsort(-sim, axis=1)[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


class EmbeddingDisplay:
    """Scatter of a 2-D embedding coloured by a category (class, split, domain...), with
    misclassified points marked and, optionally, image thumbnails at the points."""

    def __init__(
        self,
        points: np.ndarray,
        colour_by: Sequence[str],
        *,
        title: str = "",
        wrong: np.ndarray | None = None,
        paths: Sequence[str] | None = None,
    ) -> None:
        self.points, self.colour_by, self.title = np.asarray(points), list(colour_by), title
        self.wrong, self.paths = wrong, paths

    def plot(
        self, ax: Any = None, *, thumbnails: bool = False, max_thumbnails: int = 150, zoom: int = 28
    ) -> EmbeddingDisplay:
        from transferlab._internal.plotting import pyplot as _pyplot

        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 7), constrained_layout=True)
        cats = sorted(set(self.colour_by))
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        colours = np.asarray(self.colour_by)
        for i, c in enumerate(cats):
            m = colours == c
            ax.scatter(
                self.points[m, 0],
                self.points[m, 1],
                s=14,
                color=cmap(i % cmap.N),
                label=c,
                alpha=0.8,
            )
        if self.wrong is not None and self.wrong.any():
            w = self.wrong
            ax.scatter(
                self.points[w, 0],
                self.points[w, 1],
                s=60,
                facecolors="none",
                edgecolors="black",
                linewidths=1.2,
                label="misclassified",
            )
        if thumbnails and self.paths is not None:
            self._thumbnails(ax, max_thumbnails, zoom)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=8, markerscale=1.2)
        ax.set_title(self.title)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _thumbnails(self, ax: Any, max_thumbnails: int, zoom: int) -> None:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        from transferlab.data import load_image
        from transferlab.exceptions import ImageLoadError

        rng = np.random.default_rng(0)
        idx = rng.choice(
            len(self.points), size=min(max_thumbnails, len(self.points)), replace=False
        )
        for i in idx:
            try:
                img = load_image(self.paths[i], draft_size=zoom)  # type: ignore[index]
            except ImageLoadError:
                continue
            img.thumbnail((zoom, zoom))
            ab = AnnotationBbox(
                OffsetImage(np.asarray(img), zoom=1.0), self.points[i], frameon=False
            )
            ax.add_artist(ab)
