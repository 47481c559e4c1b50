"""LinearProbe: the scikit-learn contract, each classifier, probabilities, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from transferlab.exceptions import InvalidParameterError
from transferlab.probe import LinearProbe


def _blobs(n_per_class=30, n_classes=3, dim=16, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, size=(n_classes, dim))
    X = np.concatenate([rng.normal(c, 1.0, size=(n_per_class, dim)) for c in centres])
    y = np.repeat([f"class{i}" for i in range(n_classes)], n_per_class)
    return X, y


@parametrize_with_checks(
    [LinearProbe(), LinearProbe(classifier="svm"), LinearProbe(classifier="centroid")],
    expected_failed_checks=lambda est: (
        {
            "check_class_weight_classifiers": "a nearest centroid has no class weights",
            "check_non_transformer_estimators_n_iter": "a nearest centroid does not iterate",
        }
        if est.classifier == "centroid"
        else {}
    ),
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


@pytest.mark.parametrize("classifier", ["logreg", "svm", "centroid"])
def test_each_classifier_learns_and_gives_probabilities(classifier):
    X, y = _blobs()
    probe = LinearProbe(classifier=classifier).fit(X[::2], y[::2])
    assert probe.score(X[1::2], y[1::2]) > 0.9
    proba = probe.predict_proba(X[1::2])
    assert proba.shape == (len(X[1::2]), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert (probe.predict(X[1::2]) == probe.classes_[proba.argmax(1)]).all()
    assert list(probe.classes_) == ["class0", "class1", "class2"]
    assert probe.n_features_in_ == 16


@pytest.mark.parametrize("classifier", ["svm", "centroid"])
def test_scaled_scores_are_not_overconfident_on_overlapping_classes(classifier):
    X, y = _blobs(sep=0.25, n_per_class=60, seed=1)  # heavily overlapping classes
    probe = LinearProbe(classifier=classifier).fit(X[::2], y[::2])
    proba = probe.predict_proba(X[1::2])
    acc = probe.score(X[1::2], y[1::2])
    # mean confidence should track accuracy, not sit near 1.0
    assert proba.max(axis=1).mean() < acc + 0.25


def test_auto_C_picks_from_the_grid_and_one_shot_falls_back():
    X, y = _blobs()
    probe = LinearProbe(C="auto").fit(X, y)
    assert 1e-4 <= probe.C_ <= 1e2
    one_shot = LinearProbe(C="auto").fit(X[::30], y[::30])  # one example per class: no CV possible
    assert one_shot.C_ == 1.0
    assert one_shot.predict(X[::30]).tolist() == y[::30].tolist()


def test_balanced_class_weight_helps_the_minority_class():
    X, y = _blobs(n_per_class=60, n_classes=2, sep=0.6, seed=2)
    keep = np.r_[np.arange(60), np.arange(60, 66)]  # 60 vs 6
    plain = LinearProbe(C=0.01).fit(X[keep], y[keep])
    balanced = LinearProbe(C=0.01, class_weight="balanced").fit(X[keep], y[keep])
    minority = y == "class1"
    assert (balanced.predict(X[minority]) == "class1").mean() >= (
        plain.predict(X[minority]) == "class1"
    ).mean()


def test_works_in_cross_validation():
    X, y = _blobs()
    assert cross_val_score(clone(LinearProbe()), X, y, cv=3).mean() > 0.9


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"classifier": "knn"}, "classifier must be one of logreg, svm, centroid"),
        ({"C": -1}, "C must be a positive number or 'auto'"),
        ({"class_weight": "auto"}, "class_weight must be None, 'balanced' or a dict"),
    ],
)
def test_bad_parameters_are_named(params, match):
    X, y = _blobs()
    with pytest.raises(InvalidParameterError, match=match):
        LinearProbe(**params).fit(X, y)


def test_wrong_feature_length_is_explained():
    X, y = _blobs()
    probe = LinearProbe().fit(X, y)
    with pytest.raises(InvalidParameterError, match="another layer or backbone"):
        probe.predict(X[:, :8])


def test_auto_scaling_uses_l2_for_few_shots_and_standardises_with_enough_data():
    X, y = _blobs(n_per_class=30)
    few = np.r_[0, 30, 60]  # one example per class
    assert LinearProbe().fit(X[few], y[few]).scaling_ == "l2"
    assert LinearProbe().fit(X, y).scaling_ == "standardize"
    assert LinearProbe(standardize=True).fit(X[few], y[few]).scaling_ == "standardize"
    assert LinearProbe(standardize=False).fit(X, y).scaling_ == "none"
    with pytest.raises(InvalidParameterError, match="standardize must be"):
        LinearProbe(standardize="zscore").fit(X, y)


def test_one_shot_on_offset_features_is_saved_by_l2():
    """Features like a CNN's: a large shared positive component, class signal in the direction.
    Standardising two points per feature amplifies noise; unit-length vectors keep the signal."""
    rng = np.random.default_rng(3)
    base = rng.uniform(1, 3, 256)
    dirs = rng.normal(0, 1, (2, 256))

    def sample(c, n):
        return base + 0.8 * dirs[c] + rng.normal(0, 0.9, (n, 256))

    Xtr = np.r_[sample(0, 1), sample(1, 1)]
    Xte = np.r_[sample(0, 200), sample(1, 200)]
    yte = np.repeat(["a", "b"], 200)
    l2 = LinearProbe().fit(Xtr, ["a", "b"]).score(Xte, yte)
    assert l2 > 0.8
