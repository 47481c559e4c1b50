"""Typed results: every run returns a `RunResult` whose metrics object writes its JSON file;
the old names still work and warn once."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import pytest

from tests.pipeline._data import make_data
from transferlab._internal import deprecation
from transferlab.exceptions import InvalidParameterError
from transferlab.pipeline import (
    FinetuneMetrics,
    FinetuneRunConfig,
    FitConfig,
    FitMetrics,
    Metrics,
    RunResult,
    run_fit,
)
from transferlab.pipeline._results import FLATTEN, OMIT_NONE, json_key


@dataclass(kw_only=True)
class _Inner(Metrics):
    a: int
    b: int


@dataclass(kw_only=True)
class _Example(Metrics):
    ALIASES = {"score": ("old_score",)}  # noqa: RUF012

    first: str
    inner: _Inner = field(metadata=FLATTEN)
    score: float
    half: float = field(metadata=json_key("at_0.5"))
    test: dict | None = field(default=None, metadata=OMIT_NONE)
    last: int = 0


def test_metrics_to_dict_keys_aliases_omitted_and_flattened(tmp_path):
    m = _Example(first="x", inner=_Inner(a=1, b=2), score=0.5, half=0.25)
    assert m.to_dict() == {"first": "x", "a": 1, "b": 2, "score": 0.5, "old_score": 0.5,
                           "at_0.5": 0.25, "last": 0}  # fmt: skip
    assert list(m) == ["first", "a", "b", "score", "old_score", "at_0.5", "last"]
    assert m["score"] == 0.5 and "test" not in m and m.get("test") is None
    m.test = {"n": 3}
    assert list(m)[-2:] == ["test", "last"]  # in field order once set
    path = m.write(tmp_path)
    assert path == tmp_path / "metrics.json"
    assert json.loads(path.read_text()) == m.to_dict()


def test_finetune_metrics_write_probe_val_score_and_its_old_name():
    assert FinetuneMetrics.ALIASES == {"probe_val_score": ("probe_val_accuracy",)}
    from transferlab.pipeline import MultiLabelFinetuneMetrics

    assert MultiLabelFinetuneMetrics.ALIASES == {"probe_val_score": ("probe_val_map",)}


def test_run_fit_returns_typed_metrics_equal_to_metrics_json(tmp_path):
    data = make_data(tmp_path / "data")
    res = run_fit(FitConfig(data=str(data), out=str(tmp_path / "run"), progress=False))
    assert isinstance(res, RunResult) and isinstance(res.metrics, FitMetrics)
    assert res.metrics_file == tmp_path / "run" / "metrics.json"
    assert res.model_dir == tmp_path / "run" / "model" and res.report.name == "report.html"
    assert res.confusion_png == tmp_path / "run" / "confusion_matrix.png"
    written = json.loads(res.metrics_file.read_text())
    assert written == json.loads(json.dumps(res.metrics.to_dict()))
    m = res.metrics
    assert (m.n_train, m.n_val, m.n_test) == (16, 8, 0)
    assert m.classes == ["hstripes", "vstripes"] and m.accuracy == written["accuracy"]
    assert m.test is None and "test" not in written  # no test split: no test block
    assert m.calibration["fitted_on"] == "validation"
    assert res.to_dict()["metrics"] == m.to_dict()

    # the deprecated name gives the same run; a loaded Dataset now goes in FitConfig.data
    from transferlab.data import load_dataset
    from transferlab.pipeline import fit

    deprecation._warned.discard("transferlab.pipeline.fit")
    ds = load_dataset(data)
    with pytest.warns(DeprecationWarning, match="run_fit"):
        old = fit(FitConfig(data="unused", out=str(tmp_path / "old"), progress=False), ds)
    assert old.metrics.to_dict()["accuracy"] == m.accuracy
    assert old.metrics["dataset"]["path"] == ds.root


def test_a_repeated_fit_is_restored_with_the_same_typed_result(tmp_path):
    """The second identical fit comes from the first one's memo: the same typed metrics (only
    the times, the cache count and `reused_run` differ) and the same model files."""
    data = make_data(tmp_path / "data")
    cfg = {"data": str(data), "cache_dir": str(tmp_path / "cache"), "progress": False}
    first = run_fit(FitConfig(out=str(tmp_path / "a"), **cfg))
    again = run_fit(FitConfig(out=str(tmp_path / "b"), **cfg))
    assert isinstance(again.metrics, FitMetrics) and again.metrics.reused_run
    a, b = first.metrics.to_dict(), again.metrics.to_dict()
    moved = {"seconds", "stage_seconds", "n_cached", "extract_images_per_second", "reused_run"}
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= moved
    assert json.loads(again.metrics_file.read_text())["reused_run"] == again.metrics.reused_run
    for name in ("probe.zip", "model.json"):
        assert (tmp_path / "a" / "model" / name).read_bytes() == (
            tmp_path / "b" / "model" / name
        ).read_bytes()
    # another classifier is another computation
    other = run_fit(FitConfig(out=str(tmp_path / "c"), classifier="centroid", **cfg))
    assert other.metrics.reused_run is None and other.metrics.classifier == "centroid"


def _count_deprecations(call, n=2):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(n):
            call()
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_old_run_names_warn_once_and_forward(monkeypatch, tmp_path):
    from transferlab import pipeline
    from transferlab.pipeline import _evaluate, _finetune

    seen = []
    monkeypatch.setattr(_evaluate, "run_evaluate", lambda cfg: seen.append(cfg) or "ev")
    monkeypatch.setattr(_finetune, "run_finetune", lambda cfg: seen.append(cfg) or "ft")
    for old in ("evaluate_run", "finetune", "FitResult"):
        deprecation._warned.discard(f"transferlab.pipeline.{old}")

    got = _count_deprecations(
        lambda: pipeline.evaluate_run("m", "d", tmp_path, split="val", threshold=0.7)
    )
    assert len(got) == 1 and "run_evaluate" in str(got[0].message)
    assert seen[-1].split == "val" and seen[-1].threshold == 0.7 and seen[-1].model_dir == "m"

    got = _count_deprecations(lambda: pipeline.finetune("d", tmp_path, None, resume=True))
    assert len(got) == 1 and "run_finetune" in str(got[0].message)
    cfg = seen[-1]
    assert isinstance(cfg, FinetuneRunConfig) and cfg.resume and cfg.data == "d"
    assert cfg.training().epochs >= 1  # defaults when no FinetuneConfig was given

    got = _count_deprecations(lambda: pipeline.FitResult)
    assert len(got) == 1 and pipeline.FitResult is RunResult
    # the positional shape the --nproc path builds still works
    r = RunResult({"accuracy": 1.0}, tmp_path, tmp_path / "model", None, None, [("a", "b")])
    assert r.metrics["accuracy"] == 1.0 and r.skipped == [("a", "b")]


def test_configs_refuse_bad_settings(tmp_path):
    from transferlab.pipeline import DiagnoseConfig, EmbedConfig, EvaluateConfig

    with pytest.raises(InvalidParameterError, match="--split must be auto, train"):
        EvaluateConfig(model_dir="m", data="d", out="o", split="most")
    with pytest.raises(InvalidParameterError, match="--threshold must be between 0 and 1"):
        EvaluateConfig(model_dir="m", data="d", out="o", threshold=1.5)
    with pytest.raises(InvalidParameterError, match="--colour must be 'class', 'split'"):
        EmbedConfig(data="d", out="o", colour="hue")
    with pytest.raises(InvalidParameterError, match="pool must be one of"):
        FitConfig(data="d", out="o", pool="median")
    with pytest.raises(InvalidParameterError, match="cv must be >= 2"):
        DiagnoseConfig(data="d", out="o", cv=1)


def test_config_aliases_warn_once_and_forward_their_keywords(tmp_path):
    from transferlab import pipeline
    from transferlab.exceptions import DatasetNotFoundError

    for old in ("curve_run", "embed_run", "adapt_bn_run"):
        deprecation._warned.discard(f"transferlab.pipeline.{old}")

    def bad_colour():
        with pytest.raises(InvalidParameterError, match="--colour must be"):
            pipeline.embed_run("d", tmp_path / "o", colour="hue")  # reaches EmbedConfig

    got = _count_deprecations(bad_colour)
    assert len(got) == 1 and "transferlab.pipeline.run_embed" in str(got[0].message)
    for old, new in (("curve_run", "run_curve"), ("adapt_bn_run", "run_adapt_bn")):

        def missing_data(old=old):
            with pytest.raises(DatasetNotFoundError, match="missing"):
                getattr(pipeline, old)(tmp_path / "missing", tmp_path / "o")  # reaches the run

        got = _count_deprecations(missing_data)
        assert len(got) == 1 and f"transferlab.pipeline.{new}" in str(got[0].message)
    assert pipeline.curve_run.__name__ == "curve_run"
    assert pipeline.curve_run.__doc__ == (
        "Deprecated: `run_curve(CurveConfig(...))` (same keyword arguments)."
    )
    assert not (tmp_path / "o").exists()


def test_configs_build_their_extractor_from_their_own_settings(tmp_path):
    from transferlab.data import DEFAULT_MAX_PIXELS
    from transferlab.pipeline import CurveConfig, DiagnoseConfig, RankConfig

    fx = FitConfig(
        data="d", out="o", backbone="efficientnet_lite1", layer="stage3", pool="max",
        weights="random", batch_size=4, num_workers=0, device="cpu", cache_dir=str(tmp_path),
        max_pixels=1000, progress=False,
    ).extractor()  # fmt: skip
    params = fx.get_params()
    assert {k: params[k] for k in ("engine", "precision")} == {
        "engine": "auto",
        "precision": "auto",
    }
    assert {k: v for k, v in params.items() if k not in ("engine", "precision")} == {
        "backbone": "efficientnet_lite1", "layer": "stage3", "pool": "max", "weights": "random",
        "batch_size": 4, "num_workers": 0, "device": "cpu", "cache": str(tmp_path),
        "progress": False, "max_pixels": 1000, "calibration": None, "int8_model": None,
    }  # fmt: skip
    # --no-cache with --cache-dir: no vectors kept, but exports and cards still live there
    folder_only = FitConfig(data="d", out="o", no_cache=True, cache_dir="x").extractor().cache
    assert not folder_only.vectors and str(folder_only.directory) == "x"
    assert FitConfig(data="d", out="o", no_cache=True).extractor().cache is False
    assert FitConfig(data="d", out="o").extractor().cache is True
    # a config without some settings leaves them at the extractor's defaults
    curve = CurveConfig(data="d", out="o", layer="stage2").extractor()
    assert (curve.layer, curve.cache, curve.batch_size, curve.pool) == ("stage2", True, None, "avg")
    other = DiagnoseConfig(data="d", out="o", weights="w.pt", batch_size=8).extractor(
        "efficientnet_lite2", weights="default"
    )
    assert (other.backbone, other.weights, other.batch_size) == ("efficientnet_lite2", "default", 8)
    rank = RankConfig(data="d", cache_dir=str(tmp_path)).extractor("efficientnet_lite0")
    assert rank.cache == str(tmp_path) and rank.max_pixels == DEFAULT_MAX_PIXELS
