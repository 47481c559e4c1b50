"""DomainAdaptedProbe (issue 22): CORAL and self-training learn from unlabelled target vectors
and close a shift the plain probe cannot, leave the source domain as trained, survive a save."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.exceptions import InvalidParameterError
from transferlab.models._probe_io import dump_probe, load_probe
from transferlab.probe import DomainAdaptedProbe, LinearProbe


def _domains(seed: int = 0, n: int = 60, dim: int = 12):
    """Three classes in `dim` dimensions; the target is the same distribution with every
    feature rescaled and offset (a contrast and brightness change of the features: second
    moments CORAL can match, unlike a rotation)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.5, size=(3, dim))

    def draw(m: int):
        X = np.concatenate([rng.normal(c, 1.0, size=(m, dim)) for c in centres])
        return X, np.repeat(["a", "b", "c"], m)

    Xs, ys = draw(n)
    Xv, yv = draw(n // 2)
    A = np.diag(rng.uniform(0.3, 3.0, size=dim))
    shift = rng.normal(0, 8.0, size=dim)
    Xt_raw, yt = draw(n)
    return Xs, ys, Xv, yv, Xt_raw @ A + shift, yt


def test_coral_closes_a_linear_feature_shift_and_keeps_the_source_as_trained() -> None:
    Xs, ys, Xv, yv, Xt, yt = _domains(seed=1)
    plain = LinearProbe().fit(Xs, ys)
    coral = DomainAdaptedProbe("coral").fit(Xs, ys, X_target=Xt)
    assert plain.score(Xt, yt) < 0.75  # the shift hurts
    assert coral.score(Xt, yt) >= plain.score(Xt, yt) + 0.15
    # held-out source vectors are routed to the source side: scored as the plain probe
    assert coral.router_accuracy_ > 0.95
    assert coral.score(Xv, yv) >= plain.score(Xv, yv) - 0.02
    assert coral.n_target_ == len(Xt) and list(coral.classes_) == ["a", "b", "c"]


def test_self_training_uses_confident_pseudo_labels() -> None:
    rng = np.random.default_rng(2)
    Xs, ys, _, _, _, _ = _domains(seed=2)
    # a milder shift (an offset): the plain probe is right on most, self-training on more
    offset = rng.normal(0, 2.0, size=Xs.shape[1])
    Xt, yt = Xs[::2] + offset + rng.normal(0, 0.8, size=Xs[::2].shape), ys[::2]
    plain = LinearProbe().fit(Xs, ys).score(Xt, yt)
    st = DomainAdaptedProbe("self-train").fit(Xs, ys, X_target=Xt)
    assert plain < 0.9 and st.score(Xt, yt) >= plain + 0.1
    assert 0 < st.n_pseudo_ <= len(Xt)


@pytest.mark.parametrize("method", ["coral", "self-train"])
def test_saved_probe_predicts_the_same(tmp_path, method: str) -> None:
    Xs, ys, _, _, Xt, _ = _domains(seed=2)
    probe = DomainAdaptedProbe(method).fit(Xs, ys, X_target=Xt)
    dump_probe(probe, tmp_path / "probe.zip")
    again = load_probe(tmp_path / "probe.zip")
    assert type(again).__module__ == "transferlab.probe"
    np.testing.assert_allclose(again.predict_proba(Xt), probe.predict_proba(Xt), atol=1e-10)


def test_bad_target_vectors_are_explained() -> None:
    Xs, ys, _, _, Xt, _ = _domains(seed=3)
    with pytest.raises(InvalidParameterError, match="at least 10 target"):
        DomainAdaptedProbe().fit(Xs, ys, X_target=Xt[:5])
    with pytest.raises(InvalidParameterError, match="X_target has 5 features"):
        DomainAdaptedProbe().fit(Xs, ys, X_target=Xt[:, :5])
    with pytest.raises(InvalidParameterError, match="method must be one of"):
        DomainAdaptedProbe("mixstyle").fit(Xs, ys, X_target=Xt)
