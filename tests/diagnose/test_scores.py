"""Transferability scores: they rank good features above bad, match their definitions, and refuse bad input."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import optimize, special

from transferlab.diagnose._scores import (
    SCORES,
    hscore,
    kendall_tau,
    knn_accuracy,
    leep,
    logme,
    nce,
    pseudo_source_probs,
    softmax,
)
from transferlab.exceptions import InvalidParameterError

SEPARATIONS = (0.25, 0.75, 1.5, 3.0)


def _blobs(sep: float, n_per_class: int = 40, n_classes: int = 3, dim: int = 16, seed: int = 0):
    """Gaussian classes around fixed unit-norm centres scaled by `sep`: only `sep` varies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.array([f"class{i}" for i in range(n_classes)]), n_per_class)
    codes = np.repeat(np.arange(n_classes), n_per_class)
    noise = rng.normal(size=(n_classes * n_per_class, dim))
    return sep * centres[codes] + noise + 2.0, y  # offset: scores must cope with raw features


def _source_probs(y: np.ndarray, informative: bool, n_source: int = 6, seed: int = 0):
    """Softmax over `n_source` source classes, peaked on a class tied to y, or pure noise."""
    rng = np.random.default_rng(seed)
    codes = np.unique(y, return_inverse=True)[1]
    logits = rng.normal(size=(len(y), n_source))
    if informative:
        logits[np.arange(len(y)), 2 * codes] += 3.0
    return softmax(logits)


# ---------------------------------------------------------------------------------------------
# good features beat shuffled labels; more separation scores higher


@pytest.mark.parametrize("score", [logme, hscore, knn_accuracy])
def test_feature_scores_prefer_true_labels_over_shuffled(score):
    X, y = _blobs(sep=3.0)
    shuffled = np.random.default_rng(1).permutation(y)
    assert score(X, y) > score(X, shuffled)


def test_feature_scores_on_clear_blobs_are_in_expected_ranges():
    X, y = _blobs(sep=3.0)
    assert knn_accuracy(X, y) > 0.9
    assert 0.0 < hscore(X, y) < 3.0  # at most C - 1 = 2 after shrinkage, positive with signal
    value = logme(X, y)  # the exact evidence: what a brute-force maximisation finds
    assert isinstance(value, float)
    assert value == pytest.approx(_brute_force_logme(X, y), abs=1e-3)


def test_leep_and_nce_prefer_informative_source_predictions():
    _, y = _blobs(sep=1.0)
    good, bad = _source_probs(y, True), _source_probs(y, False)
    assert leep(good, y) > leep(bad, y) + 0.2
    assert nce(good.argmax(1), y) > nce(bad.argmax(1), y) + 0.2
    assert leep(good, y) <= 0.0 and nce(good.argmax(1), y) <= 0.0


def test_nleep_prefers_true_labels():
    X, y = _blobs(sep=3.0)
    probs = pseudo_source_probs(X, n_components=6)
    assert leep(probs, y) > leep(probs, np.random.default_rng(1).permutation(y)) + 0.2


def test_scores_increase_with_class_separation():
    data = [_blobs(sep) for sep in SEPARATIONS]
    logmes = [logme(X, y) for X, y in data]
    hscores = [hscore(X, y) for X, y in data]
    knns = [knn_accuracy(X, y) for X, y in data]
    assert kendall_tau(logmes, SEPARATIONS) == 1.0, logmes
    assert kendall_tau(hscores, SEPARATIONS) == 1.0, hscores
    assert all(b >= a for a, b in itertools.pairwise(knns)), knns
    assert knns[-1] > knns[0]


def test_labels_may_be_strings_or_ints_with_the_same_scores():
    X, y = _blobs(sep=1.0)
    ints = np.unique(y, return_inverse=True)[1]
    assert logme(X, y) == pytest.approx(logme(X, ints))
    assert hscore(X, y) == pytest.approx(hscore(X, ints))
    assert knn_accuracy(X, y) == knn_accuracy(X, list(ints))
    probs = _source_probs(y, True)
    assert leep(probs, y) == pytest.approx(leep(probs, ints))
    assert nce(probs.argmax(1), y) == pytest.approx(nce(probs.argmax(1), ints))


def test_feature_scores_cope_with_more_dimensions_than_samples():
    X, y = _blobs(sep=3.0, n_per_class=10, dim=200)
    shuffled = np.random.default_rng(1).permutation(y)
    for score in (logme, hscore):
        good, bad = score(X, y), score(X, shuffled)
        assert math.isfinite(good) and math.isfinite(bad)
        assert good > bad, score.__name__


# ---------------------------------------------------------------------------------------------
# LEEP and NCE: exact values from their definitions


def test_leep_is_zero_when_source_label_is_the_target_label():
    probs = np.eye(2)[[0, 0, 1, 1]]
    assert leep(probs, [0, 0, 1, 1]) == 0.0
    assert leep(probs, ["b", "b", "a", "a"]) == 0.0  # names do not matter, only the mapping


def test_leep_matches_a_hand_computed_example():
    theta = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    y = ["x", "x", "y", "y"]
    # P(y, z) = column sums of theta within each class / 4:
    #   P(x,0) = 1.4/4, P(x,1) = 0.6/4, P(y,0) = 0.4/4, P(y,1) = 1.6/4
    # P(z=0) = 1.8/4, P(z=1) = 2.2/4  =>  P(x|0) = 7/9, P(x|1) = 3/11, P(y|0) = 2/9, P(y|1) = 8/11
    eep = [
        0.8 * 7 / 9 + 0.2 * 3 / 11,
        0.6 * 7 / 9 + 0.4 * 3 / 11,
        0.3 * 2 / 9 + 0.7 * 8 / 11,
        0.1 * 2 / 9 + 0.9 * 8 / 11,
    ]
    expected = sum(math.log(p) for p in eep) / 4
    assert leep(theta, y) == pytest.approx(expected, rel=1e-12)


def test_leep_ignores_source_classes_never_predicted():
    theta = np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.1, 0.9, 0.0]])
    assert leep(theta, [0, 0, 1, 1]) == pytest.approx(leep(theta[:, :2], [0, 0, 1, 1]))


def test_nce_is_zero_for_perfectly_predictive_source_labels():
    y = np.array(["cat", "cat", "dog", "dog", "cat", "dog"])
    assert nce([0, 1, 2, 2, 0, 3], y) == 0.0  # finer source labels still determine y
    assert nce([5, 5, 7, 7, 5, 7], y) == 0.0


def test_nce_of_independent_labels_is_minus_log_two():
    assert nce([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(-math.log(2), rel=1e-12)
    rng = np.random.default_rng(0)
    y, z = rng.integers(0, 2, 4000), rng.integers(0, 5, 4000)
    assert nce(z, y) == pytest.approx(-math.log(2), abs=0.01)
    assert nce(z, y) >= -math.log(2)  # conditioning never raises the entropy


# ---------------------------------------------------------------------------------------------
# LogME: the fast fixed point equals a brute-force maximisation of the evidence


def _log_evidence(F: np.ndarray, t: np.ndarray, log_alpha: float, log_beta: float) -> float:
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    n, d = F.shape
    A = alpha * np.eye(d) + beta * F.T @ F
    m = beta * np.linalg.solve(A, F.T @ t)
    return (
        n / 2 * math.log(beta)
        + d / 2 * math.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * float(np.sum((F @ m - t) ** 2))
        - alpha / 2 * float(m @ m)
        - 0.5 * np.linalg.slogdet(A)[1]
    )


def _brute_force_logme(F: np.ndarray, y: np.ndarray) -> float:
    per_class = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        best = min(
            (
                optimize.minimize(
                    lambda p, t=t: -_log_evidence(F, t, p[0], p[1]),
                    x0,
                    method="Nelder-Mead",
                    options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 4000},
                )
                for x0 in ((0.0, 0.0), (3.0, 3.0))
            ),
            key=lambda r: r.fun,
        )
        assert np.all(np.abs(best.x) < 15), "optimum must be interior for a fair comparison"
        per_class.append(-best.fun / len(y))
    return float(np.mean(per_class))


def test_logme_matches_brute_force_evidence_maximisation_more_samples_than_dims():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=30)
    F = rng.normal(size=(30, 5)) + 2.0 * np.eye(3, 5)[y] + 1.0
    assert logme(F, y) == pytest.approx(_brute_force_logme(F, y), abs=1e-3)


def test_logme_matches_brute_force_evidence_maximisation_more_dims_than_samples():
    rng = np.random.default_rng(1)
    y = np.arange(16) % 2
    F = 0.3 * rng.normal(size=(16, 24)) + 1.5 * np.eye(2, 24)[y]
    assert logme(F, y) == pytest.approx(_brute_force_logme(F, y), abs=1e-3)


# ---------------------------------------------------------------------------------------------
# k-NN, pseudo source probabilities, softmax, kendall_tau


def test_knn_reduces_folds_for_small_classes_and_is_seeded():
    X, y = _blobs(sep=3.0, n_per_class=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "n_splits > members" warning from scikit-learn
        acc = knn_accuracy(X, y, k=5, cv=5)
    assert 0.0 <= acc <= 1.0
    X, y = _blobs(sep=0.5)
    assert knn_accuracy(X, y, seed=3) == knn_accuracy(X, y, seed=3)


def test_knn_uses_cosine_distance():
    # Same directions, wildly different norms: cosine neighbours ignore the norm.
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    directions = np.where(y[:, None] == 0, [1.0, 0.0], [0.0, 1.0]) + 0.1 * rng.normal(size=(40, 2))
    scales = rng.choice([0.01, 100.0], size=(40, 1))
    assert knn_accuracy(directions * scales, y, k=3) == 1.0


def test_pseudo_source_probs_shape_rows_and_determinism():
    X, _ = _blobs(sep=1.0, n_per_class=20)
    p = pseudo_source_probs(X, n_components=4, seed=0)
    assert p.shape == (60, 4) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-10)
    assert (p >= 0).all()
    np.testing.assert_array_equal(p, pseudo_source_probs(X, n_components=4, seed=0))
    default = pseudo_source_probs(X)
    assert default.shape == (60, 15)  # min(max(10, round(2 sqrt(60))), 60 // 2)
    assert pseudo_source_probs(X[:6]).shape == (6, 3)  # capped at n // 2


def test_softmax_is_stable_and_matches_scipy():
    logits = np.random.default_rng(0).normal(scale=30, size=(5, 1000)).astype(np.float32)
    p = softmax(logits)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, special.softmax(logits.astype(np.float64), axis=1), rtol=1e-10)
    np.testing.assert_allclose(softmax([1e4, 0.0]), [1.0, 0.0])
    assert leep(p, [0, 1, 0, 1, 1]) <= 0.0  # float32-sourced rows are accepted


def test_kendall_tau_values_and_nan_cases_without_warnings():
    assert kendall_tau([1, 2, 3, 4], [0.1, 0.2, 0.5, 0.9]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [0.9, 0.5, 0.2, 0.1]) == -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(kendall_tau([1, 2], [3, 4]))
        assert math.isnan(kendall_tau([1, 1, 1], [3, 4, 5]))
        assert math.isnan(kendall_tau([1, 2, 3], [0.5, 0.5, 0.5]))
        assert math.isnan(kendall_tau([1, 2, float("nan")], [1, 2, 3]))
    x, acc = [1, 3, 2], [1, 2, 3]  # 2 concordant pairs, 1 discordant: tau = 1/3
    pairs = [
        np.sign(x[j] - x[i]) * np.sign(acc[j] - acc[i])
        for i, j in itertools.combinations(range(len(x)), 2)
    ]
    tau = kendall_tau(x, acc)
    assert isinstance(tau, float)
    assert tau == pytest.approx(sum(pairs) / len(pairs)) and tau == pytest.approx(1 / 3)


def test_scores_registry_describes_every_score():
    for name in ("logme", "leep", "nleep", "nce", "hscore", "knn_accuracy"):
        assert "higher is better" in SCORES[name]


# ---------------------------------------------------------------------------------------------
# errors name the argument


def _X_y():
    return _blobs(sep=1.0, n_per_class=5)


@pytest.mark.parametrize("score", [logme, hscore, knn_accuracy])
def test_feature_scores_refuse_bad_input(score):
    X, y = _X_y()
    with pytest.raises(InvalidParameterError, match="y has 14 labels but there are 15 samples"):
        score(X, y[:-1])
    with pytest.raises(InvalidParameterError, match="y must contain at least 2 classes"):
        score(X, np.full(len(y), "only"))
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    with pytest.raises(InvalidParameterError, match="features contains NaN"):
        score(X_nan, y)
    with pytest.raises(InvalidParameterError, match="features must be a 2-D array"):
        score(X[:, 0], y)
    with pytest.raises(ValueError):  # catchable as the builtin too
        score(X, y[:-1])


def test_leep_refuses_bad_probabilities():
    probs = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
    y = [0, 1, 1]
    with pytest.raises(InvalidParameterError, match="source_probs rows must sum to 1"):
        leep(np.array([[0.5, 0.6], [0.2, 0.8], [0.9, 0.1]]), y)
    with pytest.raises(InvalidParameterError, match="source_probs must be non-negative"):
        leep(np.array([[1.5, -0.5], [0.2, 0.8], [0.9, 0.1]]), y)
    with pytest.raises(InvalidParameterError, match="y has 2 labels"):
        leep(probs, y[:2])
    with pytest.raises(InvalidParameterError, match="y must contain at least 2 classes"):
        leep(probs, [1, 1, 1])
    with pytest.raises(InvalidParameterError, match="source_probs contains NaN"):
        leep(np.array([[np.nan, 0.5], [0.2, 0.8], [0.9, 0.1]]), y)


def test_nce_knn_and_helpers_refuse_bad_input():
    X, y = _X_y()
    with pytest.raises(InvalidParameterError, match="source_labels has 2 labels"):
        nce([0, 1], [0, 1, 1])
    with pytest.raises(InvalidParameterError, match="y must contain at least 2 classes"):
        nce([0, 1, 0], [1, 1, 1])
    with pytest.raises(InvalidParameterError, match="every class needs at least 2 samples"):
        knn_accuracy(X, np.concatenate([y[:-1], ["lonely"]]))
    with pytest.raises(InvalidParameterError, match="k must be an integer"):
        knn_accuracy(X, y, k=0)
    with pytest.raises(InvalidParameterError, match="cv must be an integer >= 2"):
        knn_accuracy(X, y, cv=1)
    with pytest.raises(InvalidParameterError, match="features are all zero"):
        logme(np.zeros_like(X), y)
    with pytest.raises(InvalidParameterError, match="features are constant"):
        hscore(np.ones_like(X), y)
    with pytest.raises(InvalidParameterError, match="n_components must be at most"):
        pseudo_source_probs(X, n_components=100)
    with pytest.raises(InvalidParameterError, match="logits contain NaN"):
        softmax([[0.0, np.nan]])
    with pytest.raises(InvalidParameterError, match="equal length"):
        kendall_tau([1, 2, 3], [1, 2])
