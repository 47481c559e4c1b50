"""Transferability scores computed without training: rank backbones x layers before fine-tuning.

Fine-tuning every candidate backbone at every layer is expensive; these scores look only at the
frozen features (or a source model's predictions) on the target data and estimate how well they
will transfer. Every score is a pure function of numpy arrays that returns a Python float where
**higher means better expected transfer**. Labels may be any hashable values (strings or ints).

Check a score against measured accuracies with `kendall_tau`; `SCORES` describes each one for
the report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import linalg, stats
from sklearn.covariance import ledoit_wolf
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from transferlab._internal.numeric import softmax as _softmax
from transferlab.exceptions import InvalidParameterError

__all__ = [
    "SCORES",
    "hscore",
    "kendall_tau",
    "knn_accuracy",
    "leep",
    "logme",
    "nce",
    "pseudo_source_probs",
    "softmax",
]

#: Score name -> one-line description, for the report.
SCORES: dict[str, str] = {
    "logme": "LogME evidence per sample (You et al. 2021); higher is better",
    "leep": "LEEP log expected empirical prediction from a source classifier's softmax (Nguyen et al. 2020); higher is better, 0 is the maximum",
    "nleep": "N-LEEP: LEEP on Gaussian-mixture soft assignments of the features (Li et al. 2021); higher is better, 0 is the maximum",
    "nce": "Negative conditional entropy -H(Y|Z) of target given hard source labels (Tran et al. 2019); higher is better, 0 is the maximum",
    "hscore": "H-score tr(cov(f)^-1 cov(E[f|y])) with Ledoit-Wolf shrinkage (Bao et al. 2019; Ibrahim et al. 2022); higher is better",
    "knn_accuracy": "Cross-validated cosine k-nearest-neighbour accuracy on the frozen features; higher is better",
}

#: LogME fixed-point iteration: relative tolerance on lambda = alpha / beta and iteration cap.
_LOGME_TOL = 1e-3
_LOGME_MAX_ITER = 100
_LOGME_EPS = 1e-5  # keeps the alpha/beta updates finite when a fit is perfect (as the reference)

#: Rows of source probabilities must sum to 1 within this (float32 softmax over 1000 classes
#: drifts by ~1e-6); they are renormalised afterwards.
_PROB_ATOL = 1e-3

#: N-LEEP's PCA: keep this fraction of the variance, at most this many dimensions (Li et al.).
_PCA_VARIANCE = 0.8
_PCA_MAX_DIM = 64


# --------------------------------------------------------------------------------------------
# validation helpers


def _features(features: Any, name: str = "features") -> np.ndarray:
    try:
        arr = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{name} must be a numeric array, got {exc}") from None
    if arr.ndim != 2:
        raise InvalidParameterError(
            f"{name} must be a 2-D array (n_samples, n_features), got shape {arr.shape}"
        )
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise InvalidParameterError(
            f"{name} needs at least 2 samples and 1 feature, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise InvalidParameterError(
            f"{name} contains NaN or infinite values in {bad} row(s); drop or impute them first"
        )
    return arr


def _codes(labels: Any, n: int | None, name: str = "y", min_classes: int = 2) -> np.ndarray:
    """Integer codes 0..C-1 of hashable labels, checked for shape, length and class count."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InvalidParameterError(f"{name} must be a 1-D array of labels, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InvalidParameterError(
            f"{name} has {arr.shape[0]} labels but there are {n} samples; lengths must match"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidParameterError(f"{name} contains NaN or infinite labels")
    try:
        classes, codes = np.unique(arr, return_inverse=True)
    except TypeError as exc:
        raise InvalidParameterError(
            f"{name} labels must be mutually comparable (all strings or all numbers): {exc}"
        ) from None
    if len(classes) < min_classes:
        raise InvalidParameterError(
            f"{name} must contain at least {min_classes} classes, got {len(classes)}"
            + (f" ({classes[0]!r})" if len(classes) == 1 else "")
        )
    return codes.reshape(-1)


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# scores


def logme(features: Any, y: Any) -> float:
    """LogME: maximised Bayesian linear-regression evidence of the labels given the features.

    You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
    ICML 2021. For each class the one-hot target column is regressed on the raw features
    with prior ``w ~ N(0, 1/alpha)`` and noise ``N(0, 1/beta)``; the log marginal evidence is
    maximised over (alpha, beta) by the paper's fixed-point iteration, computed cheaply from one
    SVD of the features. The score is the mean over classes of evidence / n_samples: higher is
    better. It needs no training and no hyper-parameter, which is why it ranks checkpoints well.

    Features are used as they are (the reference does not standardise). Unlike the reference,
    the log-determinant counts the ``d - rank`` directions the data do not span when
    n_samples < n_features, so the value is the exact evidence in both regimes.

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> good = rng.normal(size=(40, 4)) + 3.0 * y[:, None]
    >>> logme(good, y) > logme(rng.normal(size=(40, 4)), y)
    True
    """
    f = _features(features)
    codes = _codes(y, f.shape[0])
    n, d = f.shape
    if not f.any():
        raise InvalidParameterError("features are all zero; LogME needs a non-zero feature")
    u, s, _ = np.linalg.svd(f, full_matrices=False)  # u: n x k, s: k, k = min(n, d)
    k = s.shape[0]
    sigma = s**2
    targets = np.zeros((n, int(codes.max()) + 1))
    targets[np.arange(n), codes] = 1.0
    proj = u.T @ targets  # k x C: targets in the basis of the left singular vectors
    evidences = [
        _logme_evidence(proj[:, c], float(targets[:, c] @ targets[:, c]), sigma, n, d, k)
        for c in range(targets.shape[1])
    ]
    return float(np.mean(evidences))


def _logme_evidence(x: np.ndarray, y_sq: float, sigma: np.ndarray, n: int, d: int, k: int) -> float:
    """Evidence / n for one target with projections `x` and squared norm `y_sq` (You et al.)."""
    x2 = x**2
    res_out = max(y_sq - float(x2.sum()), 0.0)  # part of y outside the span of the features

    def stats_at(alpha: float, beta: float) -> tuple[float, float, float]:
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())  # effective number of parameters
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())  # ||m||^2
        res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + res_out  # ||F m - y||^2
        return gamma, m2, res2

    alpha, beta = 1.0, 1.0
    for _ in range(_LOGME_MAX_ITER):
        lam = alpha / beta
        gamma, m2, res2 = stats_at(alpha, beta)
        alpha = gamma / (m2 + _LOGME_EPS)
        beta = (n - gamma) / (res2 + _LOGME_EPS)
        if abs(alpha / beta - lam) / lam <= _LOGME_TOL:
            break
    _, m2, res2 = stats_at(alpha, beta)  # evidence at the final (alpha, beta), not the previous
    log_det = float(np.log(alpha + beta * sigma).sum()) + (d - k) * math.log(alpha)
    evidence = (
        d / 2.0 * math.log(alpha)
        + n / 2.0 * math.log(beta)
        - 0.5 * log_det
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * math.log(2.0 * math.pi)
    )
    return evidence / n


def leep(source_probs: Any, y: Any) -> float:
    """LEEP: log expected empirical prediction of a source classifier on the target labels.

    Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020. `source_probs` is n x Z, each row a source model's softmax over
    its own label space (e.g. ImageNet's 1000 classes; see `softmax`, or `pseudo_source_probs`
    for N-LEEP on any layer). From the empirical joint P(y, z) it builds the conditional
    P(y | z) and scores mean_i log sum_z P(y_i | z) theta(x_i)_z: the average log-likelihood
    of a "re-labelled" source classifier. Higher is better; 0 (log 1) is the maximum.

    >>> leep(np.eye(2)[[0, 0, 1, 1]], ["cat", "cat", "dog", "dog"])
    0.0
    """
    probs = _features(source_probs, "source_probs")
    n = probs.shape[0]
    codes = _codes(y, n)
    if (probs < 0).any():
        raise InvalidParameterError("source_probs must be non-negative probabilities")
    sums = probs.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_PROB_ATOL):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise InvalidParameterError(
            f"source_probs rows must sum to 1 (a softmax over source classes); row {worst} "
            f"sums to {sums[worst]:.6g}. Use softmax(logits) to turn logits into probabilities"
        )
    probs = probs / sums[:, None]
    onehot = np.zeros((n, int(codes.max()) + 1))
    onehot[np.arange(n), codes] = 1.0
    joint = onehot.T @ probs / n  # C x Z: P(y, z)
    marginal = joint.sum(axis=0, keepdims=True)  # 1 x Z: P(z)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    eep = (probs * cond[codes]).sum(axis=1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(eep)))


def nce(source_labels: Any, y: Any) -> float:
    """NCE: negative conditional entropy -H(Y | Z) of target labels given hard source labels.

    Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
    `source_labels` are the source model's predicted (argmax) labels on the target images. The
    less uncertainty is left about the target label once the source label is known, the better
    the transfer: higher is better, 0 (source labels determine the target) is the maximum.

    >>> nce([0, 0, 1, 1], ["a", "a", "b", "b"])
    0.0
    >>> round(nce([0, 1, 0, 1], ["a", "a", "b", "b"]), 4)  # independent: -log 2
    -0.6931
    """
    target = _codes(y, None)
    source = _codes(source_labels, target.shape[0], name="source_labels", min_classes=1)
    n = target.shape[0]
    joint = np.zeros((int(source.max()) + 1, int(target.max()) + 1))
    np.add.at(joint, (source, target), 1.0)
    joint /= n  # P(z, y)
    cond = joint / joint.sum(axis=1, keepdims=True)  # P(y | z); every z occurs at least once
    nz = joint > 0
    return float((joint[nz] * np.log(cond[nz])).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def hscore(features: Any, y: Any) -> float:
    """H-score: how much of the feature covariance is explained by the class means.

    Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
    Learning", ICIP 2019: tr(cov(f)^-1 cov(E[f | y])), the asymptotic error exponent of the
    optimal linear classifier on f. Higher is better. The raw score inverts a d x d covariance,
    unstable (or singular) when n_samples is not much larger than n_features, so, as Ibrahim et
    al. ("Newer is not always better: Rethinking transferability metrics...", ICLR 2022)
    recommend, this is their regularised H-score: cov(f) is the Ledoit-Wolf shrunk covariance
    (1 - a) S + a mu I with the data-driven shrinkage a, and cov(E[f | y]) is scaled by
    (1 - a) to match. Both covariances are maximum-likelihood (divide by n). When the features
    look isotropic noise Ledoit-Wolf shrinks fully (a = 1) and the score is exactly 0.

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> good = rng.normal(size=(40, 4)) + 3.0 * y[:, None]
    >>> hscore(good, y) > hscore(good, rng.permutation(y))
    True
    """
    f = _features(features)
    codes = _codes(y, f.shape[0])
    n = f.shape[0]
    f = f - f.mean(axis=0)
    if not f.any():
        raise InvalidParameterError("features are constant across samples; no H-score defined")
    cov, shrinkage = ledoit_wolf(f, assume_centered=True)
    counts = np.bincount(codes).astype(np.float64)
    means = np.zeros((counts.shape[0], f.shape[1]))
    np.add.at(means, codes, f)
    means /= counts[:, None]
    # cov(E[f|y]) = sum_c p_c mu_c mu_c^T = M^T M with rows sqrt(p_c) mu_c (features centred)
    between = means * np.sqrt(counts / n)[:, None]  # C x d
    try:  # cov^-1 M^T; the shrunk covariance is positive definite whenever a > 0
        solved = linalg.solve(cov, between.T, assume_a="pos")
    except (linalg.LinAlgError, ValueError):  # a = 0 and singular: fall back to the pseudo-inverse
        solved = np.linalg.lstsq(cov, between.T, rcond=None)[0]
    return float((1.0 - shrinkage) * np.einsum("dc,cd->", solved, between))


def knn_accuracy(features: Any, y: Any, k: int = 5, cv: int = 5, seed: int = 0) -> float:
    """Stratified k-fold accuracy of a cosine k-nearest-neighbour classifier on the features.

    A cheap, model-free proxy for how linearly/locally separable the classes already are in the
    frozen representation (the k-NN probe used by DINO and most self-supervised benchmarks).
    Features are L2-normalised, so Euclidean neighbours are cosine neighbours. `cv` folds are
    reduced to the smallest class size when needed (at least 2); `k` is capped by the training
    fold size. Higher is better (a fraction in [0, 1]).

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["a", "b"], 10)
    >>> centres = np.where(y[:, None] == "a", [5.0, 0.0, 0.0], [0.0, 5.0, 0.0])
    >>> knn_accuracy(centres + rng.normal(size=(20, 3)), y, k=3)
    1.0
    """
    f = _features(features)
    codes = _codes(y, f.shape[0])
    k = _positive_int(k, "k")
    cv = _positive_int(cv, "cv", minimum=2)
    counts = np.bincount(codes)
    if counts.min() < 2:
        raise InvalidParameterError(
            f"y: every class needs at least 2 samples for cross-validation; "
            f"{int((counts < 2).sum())} class(es) have only 1"
        )
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
    folds = StratifiedKFold(n_splits=min(cv, int(counts.min())), shuffle=True, random_state=seed)
    accuracies = []
    for train, test in folds.split(f, codes):
        knn = KNeighborsClassifier(n_neighbors=min(k, len(train)), algorithm="brute")
        knn.fit(f[train], codes[train])
        accuracies.append(float((knn.predict(f[test]) == codes[test]).mean()))
    return float(np.mean(accuracies))


def pseudo_source_probs(
    features: Any, n_components: int | None = None, seed: int = 0
) -> np.ndarray:
    """Gaussian-mixture soft assignments of features, to use as `leep`'s source probabilities.

    The N-LEEP trick (Li et al., "Ranking Neural Checkpoints", CVPR 2021) for layers that are
    not a classifier's logits: standardise, PCA keeping 80% of the variance (at most 64
    dimensions), then fit a diagonal-covariance `GaussianMixture`; its n x K posterior
    responsibilities stand in for a source classifier's softmax. ``leep(pseudo_source_probs(f),
    y)`` is N-LEEP, where higher is better. When `n_components` is None, K =
    min(max(10, round(2 sqrt(n))), n // 2) (at least 1): enough clusters to resolve the
    target classes of small datasets without one cluster per sample. Deterministic for a seed.

    >>> rng = np.random.default_rng(0)
    >>> p = pseudo_source_probs(rng.normal(size=(30, 5)), n_components=3)
    >>> p.shape, bool(np.allclose(p.sum(axis=1), 1.0))
    ((30, 3), True)
    """
    f = _features(features)
    n = f.shape[0]
    if n_components is None:
        n_components = max(1, min(max(10, round(2.0 * math.sqrt(n))), n // 2))
    else:
        n_components = _positive_int(n_components, "n_components")
        if n_components > n:
            raise InvalidParameterError(
                f"n_components must be at most the number of samples ({n}), got {n_components}"
            )
    seed = _positive_int(seed, "seed", minimum=0)
    z = StandardScaler().fit_transform(f)
    if not z.any():
        raise InvalidParameterError("features are constant across samples; nothing to cluster")
    z = PCA(n_components=_PCA_VARIANCE, svd_solver="full").fit_transform(z)[:, :_PCA_MAX_DIM]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm = GaussianMixture(n_components=n_components, covariance_type="diag", random_state=seed)
        probs = gmm.fit(z).predict_proba(z)
    return np.asarray(probs, dtype=np.float64)


def softmax(logits: Any) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64.

    Turns a backbone's classifier logits into the source probabilities `leep` expects; the max
    is subtracted first so large logits do not overflow.

    >>> softmax([[0.0, 0.0], [1000.0, 0.0]]).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    try:
        z = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"logits must be a numeric array, got {exc}") from None
    if z.ndim < 1 or z.shape[-1] < 1:
        raise InvalidParameterError(f"logits must have at least one class, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise InvalidParameterError("logits contain NaN or infinite values")
    return _softmax(z)


def kendall_tau(
    scores: Sequence[float] | np.ndarray, accuracies: Sequence[float] | np.ndarray
) -> float:
    """Kendall's tau between transferability scores and measured accuracies.

    How well a score ranks backbones/layers (the measure used by the papers above): 1 is a
    perfect ranking, -1 a reversed one. NaN, without a warning, when fewer than 3 points, any
    value is NaN/inf, or either side is constant (no ranking to compare).

    >>> kendall_tau([0.1, 0.5, 0.3], [0.6, 0.9, 0.7])
    1.0
    >>> kendall_tau([1, 2], [3, 4])
    nan
    """
    try:
        a = np.asarray(scores, dtype=np.float64)
        b = np.asarray(accuracies, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"scores and accuracies must be numeric: {exc}") from None
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise InvalidParameterError(
            f"scores and accuracies must be 1-D and of equal length, got shapes {a.shape} and {b.shape}"
        )
    if (
        a.shape[0] < 3
        or not (np.isfinite(a).all() and np.isfinite(b).all())
        or np.ptp(a) == 0
        or np.ptp(b) == 0
    ):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(a, b).statistic)
