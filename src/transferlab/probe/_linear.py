"""Linear probes on frozen features: the strong, cheap baseline that fine-tuning must beat.

`LinearProbe` is a scikit-learn classifier (standardise -> logistic regression, linear SVM or nearest
centroid) with `predict_proba` for all three, so every probe can feed calibrated-looking scores to
evaluation, confidence thresholds and the service.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y

from transferlab._internal.choices import CLASSIFIERS
from transferlab._internal.numeric import softmax
from transferlab.exceptions import InvalidParameterError

__all__ = ["CLASSIFIERS", "LinearProbe", "MultiLabelProbe", "oof_proba"]

#: Grid searched when ``C="auto"``.
C_GRID = np.logspace(-4, 2, 13)


def _check_features(probe: Any, X: Any) -> np.ndarray:
    """`X` as float64 for a fitted `probe`, refused when its width is not the one fitted on."""
    check_is_fitted(probe, "pipeline_")
    X = check_array(X, dtype=np.float64)
    if X.shape[1] != probe.n_features_in_:
        raise InvalidParameterError(
            f"X has {X.shape[1]} features, but {type(probe).__name__} is expecting "
            f"{probe.n_features_in_} features as input (features from another layer or backbone?)"
        )
    return X


class LinearProbe(ClassifierMixin, BaseEstimator):
    """A linear classifier on frozen backbone features.

    Args:
        classifier: ``"logreg"`` (multinomial logistic regression, default), ``"svm"`` (linear SVM;
            probabilities from a softmax of its margins, scaled on the training data) or
            ``"centroid"`` (nearest class mean, the one-shot classic). SVM and centroid
            probabilities are a softmax of their scores with a temperature fitted on
            out-of-fold training scores.
        C: inverse regularisation strength, or ``"auto"`` to choose it by stratified
            cross-validation on the training data (needs 2+ examples per class; else 1.0).
        standardize: how features are scaled first: True (zero mean, unit variance per feature),
            ``"l2"`` (each vector to unit length), False (as they are), or ``"auto"`` (default):
            standardise when every class has at least `min_standardize` (20) examples, else L2. Per-
            feature statistics from one or two images per class are noise, and measured here they
            cost 25 points of 1-shot accuracy on hymenoptera (0.634 vs 0.875 with L2).
        class_weight: None, ``"balanced"`` (weights inversely proportional to class frequency), or
            a dict label -> weight. Ignored by ``"centroid"`` except that a dict is refused.
        max_iter: solver iterations.
        cv: folds for ``C="auto"``.
        random_state: seed for the solvers that use one.

    Attributes:
        classes_: class labels, in the order of `predict_proba` columns.
        n_features_in_: feature vector length seen in `fit`.
        C_: the C used (chosen, when ``C="auto"``).
        scaling_: the feature scaling used: ``"standardize"``, ``"l2"`` or ``"none"``.
        pipeline_: the fitted scikit-learn `Pipeline`.
        n_iter_: solver iterations (logreg and svm).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = np.r_[rng.normal(0, 1, (20, 5)), rng.normal(3, 1, (20, 5))]
        >>> y = np.array(["a"] * 20 + ["b"] * 20)
        >>> probe = LinearProbe().fit(X, y)
        >>> probe.predict([[3, 3, 3, 3, 3]]).tolist(), probe.predict_proba(X).shape
        (['b'], (40, 2))
    """

    def __init__(
        self,
        *,
        classifier: str = "logreg",
        C: float | str = 1.0,
        standardize: bool | str = "auto",
        class_weight: str | dict[Any, float] | None = None,
        max_iter: int = 3000,
        cv: int = 5,
        random_state: int | None = 0,
        min_standardize: int = 20,
    ) -> None:
        self.classifier = classifier
        self.C = C
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.cv = cv
        self.min_standardize = min_standardize
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise InvalidParameterError(
                f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}"
            )
        if not (self.C == "auto" or (isinstance(self.C, (int, float)) and self.C > 0)):
            raise InvalidParameterError(f"C must be a positive number or 'auto', got {self.C!r}")
        if not (self.class_weight in (None, "balanced") or isinstance(self.class_weight, dict)):
            raise InvalidParameterError(
                f"class_weight must be None, 'balanced' or a dict class -> weight, got {self.class_weight!r}"
            )
        if isinstance(self.class_weight, dict) and self.classifier == "centroid":
            raise InvalidParameterError("class_weight is not supported with classifier='centroid'")

    def _estimator(self, n_min: int) -> Any:
        g = self._c_gain
        C = self.C if self.C == "auto" else float(self.C) * g
        folds = min(self.cv, n_min)
        if self.classifier == "logreg":
            if C == "auto" and folds >= 2:
                return LogisticRegressionCV(
                    Cs=C_GRID * g,
                    cv=folds,
                    scoring="neg_log_loss",
                    max_iter=self.max_iter,
                    class_weight=self._class_weight_enc,
                    random_state=self.random_state,
                )
            return LogisticRegression(
                C=g if C == "auto" else float(C),
                max_iter=self.max_iter,
                class_weight=self._class_weight_enc,
                random_state=self.random_state,
            )
        if self.classifier == "svm":
            svc = LinearSVC(
                C=g if C == "auto" else float(C),
                max_iter=self.max_iter,
                class_weight=self._class_weight_enc,
                random_state=self.random_state,
            )
            if C == "auto" and folds >= 2:
                from sklearn.model_selection import GridSearchCV, StratifiedKFold

                return GridSearchCV(
                    svc, {"C": C_GRID * g}, cv=StratifiedKFold(folds, shuffle=True, random_state=0)
                )
            return svc
        return NearestCentroid()

    def fit(self, X: Any, y: Any) -> LinearProbe:
        """Fit on features `X` (n_samples, n_features) and labels `y`. Returns self."""
        self._check_params()
        X, y = check_X_y(X, y, dtype=np.float64)
        check_classification_targets(y)
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        if len(self.classes_) < 2:
            raise InvalidParameterError(
                f"y must hold at least 2 classes to train a classifier, got {len(self.classes_)} class"
            )
        y_enc = self._encoder.transform(y)
        self._class_weight_enc: Any = self.class_weight
        if isinstance(self.class_weight, dict):  # keys are labels; the solver sees encoded ones
            known = set(self.classes_.tolist())
            self._class_weight_enc = {
                int(self._encoder.transform([k])[0]): w
                for k, w in self.class_weight.items()
                if k in known
            }
        n_min = int(np.bincount(y_enc).min())
        steps: list[tuple[str, Any]] = []
        mode = self.standardize
        if mode == "auto":
            # a vector of one feature has no direction to keep: standardise it instead
            mode = True if n_min >= self.min_standardize or X.shape[1] < 2 else "l2"
        if mode not in (True, False, "l2"):
            raise InvalidParameterError(
                f"standardize must be True, False, 'l2' or 'auto', got {self.standardize!r}"
            )
        if mode == "l2":
            from sklearn.preprocessing import Normalizer

            steps.append(("l2", Normalizer()))
        elif mode:
            steps.append(("scale", StandardScaler()))
        self.scaling_ = "l2" if mode == "l2" else ("standardize" if mode else "none")
        # unit-length vectors are sqrt(d) times smaller than standardised ones: C scaled by d is
        # C on vectors of length sqrt(d) (one unit per feature), so one C means the same
        # regularisation under either scaling. Unscaled, C=1 on unit vectors left the weights so
        # small that the intercept decided: 20 random labels of aid_rs10 scored 0.27 against
        # 0.59 (RESULTS.md issue 19)
        self._c_gain = float(X.shape[1]) if mode == "l2" else 1.0
        steps.append(("clf", self._estimator(n_min)))
        self.pipeline_ = Pipeline(steps)
        with warnings.catch_warnings():
            # lbfgs on separable few-shot data rarely "converges"; the solution is still usable.
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter(
                "ignore", UserWarning
            )  # e.g. NearestCentroid's zero-variance note
            warnings.simplefilter("ignore", FutureWarning)  # LogisticRegressionCV's 1.10 changes
            self.pipeline_.fit(X, y_enc)
            if self.classifier != "logreg":
                self.temperature_ = self._fit_temperature(X, y_enc, min(self.cv, n_min))
        clf = self.pipeline_[-1]
        if hasattr(clf, "best_estimator_"):
            self.C_ = float(clf.best_params_["C"]) / self._c_gain
        elif hasattr(clf, "C_"):
            self.C_ = float(np.ravel(clf.C_)[0]) / self._c_gain
        else:
            self.C_ = (
                float(getattr(clf, "C", np.nan)) / self._c_gain
                if self.classifier != "centroid"
                else float("nan")
            )
        n_iter = getattr(clf, "n_iter_", None)
        if n_iter is None and hasattr(clf, "best_estimator_"):
            n_iter = getattr(clf.best_estimator_, "n_iter_", None)
        if n_iter is not None:
            self.n_iter_ = int(np.max(n_iter))
        if hasattr(clf, "best_estimator_"):  # the grid search predicts with its refit best: keep
            # only that (what a saved model needs, without the search's scorers and folds)
            self.pipeline_.steps[-1] = ("clf", clf.best_estimator_)
        self.n_features_in_ = X.shape[1]
        return self

    def _scores(self, pipe: Pipeline, X: np.ndarray) -> np.ndarray:
        """Per-class scores whose softmax gives probabilities: SVM margins, or minus the squared
        distance to each class centroid (in the standardised space)."""
        if self.classifier == "centroid":
            Z = pipe[:-1].transform(X) if len(pipe) > 1 else X
            c = pipe[-1].centroids_
            return -((Z**2).sum(1)[:, None] - 2 * Z @ c.T + (c**2).sum(1)[None, :]) / Z.shape[1]
        d = pipe.decision_function(X)
        return np.c_[-d, d] if d.ndim == 1 else d

    def _fit_temperature(self, X: np.ndarray, y: np.ndarray, folds: int) -> float:
        """Softmax temperature minimising the log loss of out-of-fold scores.

        Scores on the training data itself are overconfident (the data are nearly separable), so
        folds are used when every class has 2+ examples. Scaling keeps the argmax unchanged.
        """
        if folds >= 2:
            from sklearn.base import clone
            from sklearn.model_selection import StratifiedKFold

            scores = np.zeros((len(y), len(self.classes_)))
            for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
                pipe = clone(self.pipeline_).fit(X[tr], y[tr])
                fold_scores = self._scores(pipe, X[te])
                cols = np.unique(y[tr])
                scores[np.ix_(te, cols)] = fold_scores
        else:
            scores = self._scores(self.pipeline_, X)
        temps = np.logspace(-3, 3, 61)
        rows = np.arange(len(y))
        losses = [-np.log(softmax(scores / t)[rows, y] + 1e-12).mean() for t in temps]
        return float(temps[int(np.argmin(losses))])

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of `classes_`."""
        X = _check_features(self, X)
        if self.classifier == "logreg":
            return self.pipeline_.predict_proba(X)
        return softmax(self._scores(self.pipeline_, X) / self.temperature_)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class per row."""
        proba = self.predict_proba(X)  # checks fitted first
        return self.classes_[np.argmax(proba, axis=1)]

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-probabilities, one column per class; for two classes, the log-odds of `classes_[1]`
        (scikit-learn's convention: positive means the second class)."""
        logp = np.log(np.clip(self.predict_proba(X), 1e-15, None))
        return logp[:, 1] - logp[:, 0] if logp.shape[1] == 2 else logp


class MultiLabelProbe(ClassifierMixin, BaseEstimator):
    """One-vs-rest logistic regressions on frozen features: several labels per image.

    `fit(X, Y)` takes a 0/1 matrix `Y` (n_samples, n_labels). `predict_proba` gives each label's
    independent probability; `predict` applies per-label `thresholds_` (0.5 until
    `tune_thresholds` sets them from held-out data).

    Args:
        C: inverse regularisation strength of every per-label logistic regression.
        standardize: scale features first.
        class_weight: None or ``"balanced"`` (per label: positives vs negatives).
        max_iter: solver iterations.
        random_state: solver seed.

    Attributes:
        n_labels_: number of labels.
        n_features_in_: feature length.
        thresholds_: per-label decision thresholds.
        pipeline_: the fitted scikit-learn pipeline.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(60, 4))
        >>> Y = np.c_[X[:, 0] > 0, X[:, 1] > 0].astype(int)
        >>> MultiLabelProbe().fit(X, Y).predict(X[:3]).tolist() == Y[:3].tolist()
        True
    """

    def __init__(
        self,
        *,
        C: float = 1.0,
        standardize: bool = True,
        class_weight: str | None = None,
        max_iter: int = 3000,
        random_state: int | None = 0,
    ) -> None:
        self.C = C
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, Y: Any) -> MultiLabelProbe:
        """Fit one logistic regression per label column of `Y`. Returns self."""
        from sklearn.multiclass import OneVsRestClassifier

        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise InvalidParameterError(f"C must be a positive number, got {self.C!r}")
        X = check_array(X, dtype=np.float64)
        Y = np.asarray(Y)
        if Y.ndim != 2 or Y.shape[0] != X.shape[0] or not np.isin(Y, (0, 1)).all():
            raise InvalidParameterError(
                f"Y must be a 0/1 matrix with one row per sample ({X.shape[0]}), got shape {Y.shape}"
            )
        lr = LogisticRegression(
            C=float(self.C),
            max_iter=self.max_iter,
            class_weight=self.class_weight,
            random_state=self.random_state,
        )
        steps: list[tuple[str, Any]] = [("scale", StandardScaler())] if self.standardize else []
        steps.append(("clf", OneVsRestClassifier(lr)))
        self.pipeline_ = Pipeline(steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)  # a label that is always (or never) on
            self.pipeline_.fit(X, Y)
        self.n_labels_ = Y.shape[1]
        self.classes_ = np.arange(self.n_labels_)
        self.n_features_in_ = X.shape[1]
        self.thresholds_ = np.full(self.n_labels_, 0.5)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Each label's probability, (n_samples, n_labels)."""
        X = _check_features(self, X)
        return self.pipeline_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """0/1 matrix: label j is on where its probability reaches ``thresholds_[j]``."""
        return (self.predict_proba(X) >= self.thresholds_[None, :]).astype(int)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False
        return tags


def oof_proba(
    X: np.ndarray, y: np.ndarray, cv: int = 5, seed: int = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of a `LinearProbe` (`params`) over stratified folds (at most
    the smallest class count), and the classes of their columns: each image scored by a probe
    that never saw it, for choosing between probes and for finding likely label errors.

    Raises:
        InvalidParameterError: a class has fewer than 2 images (no fold can hold one out).
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise InvalidParameterError(
            f"cross-validation needs 2 images per class; {classes[counts.argmin()]!r} has 1"
        )
    folds = StratifiedKFold(n_splits=min(cv, int(counts.min())), shuffle=True, random_state=seed)
    proba = cross_val_predict(LinearProbe(**params), X, y, cv=folds, method="predict_proba")
    return proba, classes
