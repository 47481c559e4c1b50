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
