"""Feature extraction and the on-disk cache: correctness, keys, interruption, file output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests._helpers import build_image_folder
from transferlab.exceptions import ImageLoadError, InvalidParameterError
from transferlab.features import FeatureCache, FeatureExtractor, load_features, save_features


def _paths(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.png"))


@pytest.fixture
def images(tmp_path):
    return _paths(build_image_folder(tmp_path / "imgs", n_per_class=5))


def _fx(cache, **kw):
    return FeatureExtractor("test_resnet", weights="random", cache=cache, progress=False, **kw)


def test_features_match_a_direct_forward_pass(images):
    fx = _fx(False, layer="pre_logits")
    X = fx.transform(images[:3])
    assert X.dtype == np.float32 and X.shape == (3, fx.n_features_out_)
    bb = fx.backbone_
    from transferlab.data import load_image

    x = torch.stack([bb.transform()(load_image(p)) for p in images[:3]])
    with torch.inference_mode():
        ref = bb.model.forward_head(bb.model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(X, ref, rtol=1e-4, atol=1e-5)


def test_second_run_comes_from_cache_with_identical_vectors(images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    first = _fx(cache).extract(images)
    assert first.n_cached == 0
    second = _fx(cache).extract(images)
    assert second.n_cached == len(images)
    np.testing.assert_array_equal(first.features["pre_logits"], second.features["pre_logits"])
    assert cache.info()["entries"] == len(images)


def test_cache_key_follows_content_not_name(images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    _fx(cache).extract(images[:2])
    renamed = tmp_path / "renamed.png"
    renamed.write_bytes(Path(images[0]).read_bytes())
    assert _fx(cache).extract([str(renamed)]).n_cached == 1
    # same name, new content -> a miss
    Image.new("RGB", (64, 64), (10, 200, 30)).save(images[1])
    assert _fx(cache).extract([images[1]]).n_cached == 0


@pytest.mark.parametrize(
    "change", [{"layer": "stage2"}, {"pool": "max", "layer": "stage2"}, {"weights": "__file__"}]
)
def test_cache_key_covers_layer_pool_and_weights(images, tmp_path, change):
    cache = FeatureCache(tmp_path / "cache")
    base = {"layer": "stage2"} if "pool" in change else {}
    _fx(cache, **base).extract(images[:2])
    if change.get("weights") == "__file__":
        bb = _fx(False).fit().backbone_
        sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in bb.model.state_dict().items()}
        path = tmp_path / "tweaked.pth"
        torch.save(sd, path)
        fx = FeatureExtractor("test_resnet", weights=str(path), cache=cache, progress=False)
    else:
        fx = _fx(cache, **change)
    assert fx.extract(images[:2]).n_cached == 0


def test_several_layers_in_one_pass_equal_single_layer_runs(images):
    fx = _fx(False)
    both = fx.extract(images, layers=["stage1", "pre_logits"])
    np.testing.assert_allclose(
        both.features["stage1"], _fx(False, layer="stage1").transform(images), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        both.features["pre_logits"], fx.transform(images), rtol=1e-5, atol=1e-6
    )


def test_worker_processes_give_the_same_vectors(images):
    a = _fx(False, num_workers=0, batch_size=4).transform(images)
    b = _fx(False, num_workers=2, batch_size=4).transform(images)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_broken_images_are_skipped_or_raise(images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    mixed = [images[0], str(bad), images[1], str(tmp_path / "missing.png")]
    res = _fx(False).extract(mixed, on_error="skip")
    assert res.paths == [images[0], images[1]]
    assert res.index.tolist() == [0, 2]
    assert [f.path for f in res.failures] == [str(bad), str(tmp_path / "missing.png")]
    with pytest.raises(ImageLoadError, match=r"bad\.jpg"):
        _fx(False).transform(mixed)


def test_parameter_errors_name_the_parameter(images):
    with pytest.raises(InvalidParameterError, match="pool"):
        FeatureExtractor("test_resnet", weights="random", pool="mean").fit()
    with pytest.raises(InvalidParameterError, match="batch_size"):
        FeatureExtractor("test_resnet", weights="random", batch_size=0).fit()


def test_cache_clear_and_info(images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    _fx(cache).extract(images)
    info = cache.info()
    assert info["entries"] == len(images) and info["bytes"] > 0
    assert info["namespaces"][0]["backbone"] == "test_resnet"
    assert cache.clear() == len(images)
    assert cache.info()["entries"] == 0
    assert _fx(cache).extract(images).n_cached == 0


_KILL_SCRIPT = """
import sys
from transferlab.features import FeatureExtractor
paths = sys.argv[2:]
fx = FeatureExtractor("test_resnet", weights="random", cache=sys.argv[1], batch_size=2,
                      num_workers=0, progress=False)
fx.fit()
print("ready", flush=True)
fx.extract(paths)
"""


def test_cache_survives_a_killed_run(tmp_path):
    """SIGKILL mid-extraction leaves only whole entries; a rerun completes with correct vectors."""
    root = build_image_folder(tmp_path / "many", n_per_class=40, seed=3)
    paths = _paths(root)
    cache_dir = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(cache_dir), *paths],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    cache = FeatureCache(cache_dir)
    deadline = time.time() + 60
    while time.time() < deadline and cache.info()["entries"] < 6:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = cache.info()["entries"]
    assert 0 < written < len(paths), "the run must be killed part-way"
    resumed = _fx(FeatureCache(cache_dir)).extract(paths)
    assert resumed.n_cached == written
    reference = _fx(False).transform(paths)
    np.testing.assert_allclose(resumed.features["pre_logits"], reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_save_and_load_feature_files(tmp_path, suffix):
    X = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    path = save_features(
        tmp_path / f"f{suffix}",
        X,
        ["a.png", "b.png", "c.png"],
        ["x", None, "y"],
        ["train", "val", ""],
        meta={"layer": "stage2"},
    )
    back = load_features(path)
    np.testing.assert_array_equal(back["X"], X)
    assert back["paths"] == ["a.png", "b.png", "c.png"]
    assert back["labels"] == ["x", "", "y"]
    assert back["splits"] == ["train", "val", ""]
    assert back["meta"] == {"layer": "stage2"}
    assert not list(tmp_path.glob(".*tmp"))


def test_feature_files_written_by_the_old_codec_still_load(tmp_path):
    """Parquet files as save_features wrote them before the codec was shared with the Ray
    shards (inferred string columns; an empty file's vectors as list<float32>) read the same,
    and a new file has the same schema as an old one."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    old = pa.table(
        {
            "path": ["a.png", "b.png"],
            "label": ["x", ""],
            "split": ["train", "val"],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 3),
        }
    ).replace_schema_metadata({"transferlab": '{"layer": "stage2"}'})
    pq.write_table(old, tmp_path / "old.parquet")
    back = load_features(tmp_path / "old.parquet")
    np.testing.assert_array_equal(back["X"], X)
    assert back["paths"] == ["a.png", "b.png"] and back["meta"] == {"layer": "stage2"}
    new = save_features(
        tmp_path / "new.parquet", X, ["a.png", "b.png"], ["x", None], ["train", "val"],
        meta={"layer": "stage2"},
    )  # fmt: skip
    assert pq.read_schema(new).equals(pq.read_schema(tmp_path / "old.parquet"), check_metadata=True)

    empty = pa.table(
        {"path": pa.array([], pa.string()), "label": pa.array([], pa.string()),
         "split": pa.array([], pa.string()), "vector": pa.array([], pa.list_(pa.float32()))}
    )  # fmt: skip
    pq.write_table(empty, tmp_path / "empty.parquet")
    back = load_features(tmp_path / "empty.parquet")
    assert back["X"].shape == (0, 0) and back["paths"] == [] and back["meta"] == {}


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "test_resnet"])
def test_onnx_engine_matches_pytorch_and_exports_once(images, tmp_path, backbone):
    """engine='onnx' exports the backbone once into the cache folder and gives the same vectors
    as PyTorch (within 1e-4) for every tap kind: an early stage, pre_logits and logits."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    layers = ["stage2", "pre_logits", "logits"]
    weights = "random" if backbone == "test_resnet" else "default"
    ref = FeatureExtractor(
        backbone, weights=weights, cache=False, progress=False, engine="torch"
    ).extract(images, layers=layers)
    cache = FeatureCache(tmp_path / "cache")
    fx = FeatureExtractor(backbone, weights=weights, cache=cache, progress=False, engine="onnx")
    got = fx.extract(images, layers=layers)
    for layer in layers:
        np.testing.assert_allclose(got.features[layer], ref.features[layer], atol=1e-4, rtol=1e-4)
    exported = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    # new images (not in the feature cache) go through the exported graph again, not a new export
    more = _paths(build_image_folder(tmp_path / "more", n_per_class=2, seed=5))
    fx2 = FeatureExtractor(backbone, weights=weights, cache=cache, progress=False, engine="onnx")
    res = fx2.extract(more, layers=layers)
    assert res.n_cached == 0 and res.features["pre_logits"].shape[0] == len(more)
    assert [p.stat().st_mtime_ns for p in (tmp_path / "cache" / "onnx").glob("*.onnx")] == [stamp]
    with pytest.raises(InvalidParameterError, match="engine must be one of"):
        FeatureExtractor(backbone, engine="tensorrt", cache=False).fit()


def test_auto_engine_exports_only_when_it_pays(images, tmp_path, monkeypatch):
    """engine='auto' (the default) stays on PyTorch for a handful of images, exports to ONNX once
    a run is big enough, and from then on uses the export even for a single image."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import transferlab.features._ort_engine as features_mod  # where the name is looked up

    assert FeatureExtractor().engine == "auto"
    cache = FeatureCache(tmp_path / "cache")
    onnx_dir = tmp_path / "cache" / "onnx"
    monkeypatch.setattr(features_mod, "ONNX_AUTO_MIN_IMAGES", len(images) + 1)
    fx = FeatureExtractor("test_resnet", weights="random", cache=cache, progress=False)
    few = fx.extract(images)
    assert not onnx_dir.exists() or not list(onnx_dir.glob("*.onnx"))  # torch: no export
    monkeypatch.setattr(features_mod, "ONNX_AUTO_MIN_IMAGES", 2)
    more = _paths(build_image_folder(tmp_path / "more", n_per_class=2, seed=7))
    fx.extract(more)
    assert len(list(onnx_dir.glob("*.onnx"))) == 1
    # a fresh extractor (a new process, say) with one new image finds the export and uses it
    monkeypatch.setattr(features_mod, "ONNX_AUTO_MIN_IMAGES", 10_000)
    fresh = FeatureExtractor("test_resnet", weights="random", cache=cache, progress=False)
    one = _paths(build_image_folder(tmp_path / "one", n_per_class=1, seed=9))[:1]
    got = fresh.extract(one)
    assert got.n_cached == 0
    runners = fresh.__dict__.get("_onnx_runners", {})
    assert runners, "the existing export was not used"
    assert len(list(onnx_dir.glob("*.onnx"))) == 1
    assert few.features["pre_logits"].shape[0] == len(images)


def test_auto_engine_falls_back_to_torch_once_when_the_export_fails(
    images, tmp_path, monkeypatch, caplog
):
    """An architecture the ONNX exporter cannot trace costs one warning, not an error: 'auto'
    computes the same vectors with PyTorch and does not try the export again."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import transferlab.backbones as backbones_mod
    import transferlab.features._ort_engine as features_mod  # where the name is looked up

    calls = []

    class BrokenExport(backbones_mod.OnnxTaps):
        """Fails for the pre_logits tap only: other taps of the same backbone still export."""

        def __init__(self, bb, layers, *args, **kwargs):
            if "pre_logits" in layers:
                calls.append(1)
                raise RuntimeError("cannot trace this graph")
            super().__init__(bb, layers, *args, **kwargs)

    monkeypatch.setattr(backbones_mod, "OnnxTaps", BrokenExport)
    monkeypatch.setattr(features_mod, "ONNX_AUTO_MIN_IMAGES", 1)
    fx = FeatureExtractor(
        "test_resnet", weights="random", cache=FeatureCache(tmp_path / "c"), progress=False
    )
    with caplog.at_level("WARNING", logger="transferlab"):
        got = fx.transform(images[:3])
        again = fx.transform(images[3:5])
    ref = FeatureExtractor("test_resnet", weights="random", cache=False, engine="torch")
    np.testing.assert_allclose(got, ref.transform(images[:3]), atol=1e-6)
    assert again.shape[0] == 2
    assert len(calls) == 1  # tried once per backbone/layers, then PyTorch without asking again
    assert "ONNX export of test_resnet failed" in caplog.text
    assert not fx.__dict__["_onnx_runners"]
    # the failure is remembered for that tap alone: another tap of the backbone still exports
    fx.extract(images[5:7], layers=["stage1"])
    assert len(fx.__dict__["_onnx_runners"]) == 1
    assert len(list((tmp_path / "c" / "onnx").glob("*.onnx"))) == 1


def test_bf16_precision_is_close_to_fp32_and_cached_apart(images, tmp_path):
    """precision='bf16' (autocast; the GPU default) gives vectors close to fp32's and keeps them
    in their own cache namespace, so fp32 callers never get bf16 vectors from the cache."""
    images = images[:3]  # bf16 autocast is slow on CPUs without native bf16
    cache = FeatureCache(tmp_path / "cache")
    common = {"cache": cache, "progress": False, "engine": "torch"}
    fp32 = FeatureExtractor("efficientnet_lite0", precision="fp32", **common)
    bf16 = FeatureExtractor("efficientnet_lite0", precision="bf16", **common)
    a, b = fp32.transform(images), bf16.transform(images)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99
    assert np.abs(a - b).max() > 1e-6  # really computed in bf16, not served from fp32's cache
    assert fp32.namespace()[0] != bf16.namespace()[0]
    # fp32 stays the CPU default, and its cache key did not change
    auto = FeatureExtractor("efficientnet_lite0", **common)
    assert auto.namespace()[0] == fp32.namespace()[0]
    with pytest.raises(InvalidParameterError, match="precision must be one of"):
        FeatureExtractor("efficientnet_lite0", precision="fp8", cache=False).fit()
    with pytest.raises(InvalidParameterError, match="needs engine='torch'"):
        FeatureExtractor(
            "efficientnet_lite0", precision="bf16", engine="onnx", cache=False, progress=False
        ).extract(images)


def test_prepare_exports_up_front_for_long_running_processes(images, tmp_path):
    """prepare() makes 'auto' use ONNX Runtime from the first small batch (the service calls it
    at start-up); with engine='torch' it only loads the backbone."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    onnx_dir = tmp_path / "cache" / "onnx"
    torch_fx = FeatureExtractor(
        "test_resnet", weights="random", cache=FeatureCache(tmp_path / "cache"), engine="torch"
    ).prepare()
    assert hasattr(torch_fx, "backbone_") and not onnx_dir.exists()
    fx = FeatureExtractor(
        "test_resnet", weights="random", cache=FeatureCache(tmp_path / "cache"), progress=False
    ).prepare()
    assert len(list(onnx_dir.glob("*.onnx"))) == 1
    ref = FeatureExtractor("test_resnet", weights="random", cache=False, engine="torch")
    np.testing.assert_allclose(
        fx.transform(images[:2]), ref.transform(images[:2]), atol=1e-4, rtol=1e-4
    )
    assert fx.__dict__["_onnx_runners"]


def test_auto_precision_is_the_backbones_rule_without_cpu_bf16(monkeypatch):
    """precision='auto' follows `backbones.use_bf16(..., cpu=False)`: bf16 on a GPU that has it,
    fp32 on other GPUs and on every CPU (the fp32 reference vectors); explicit values win."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve "cuda" without one
    for supported, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        assert FeatureExtractor(precision="auto", device="cuda")._precision() == want
    assert FeatureExtractor(precision="auto", device="cpu")._precision() == "fp32"
    assert FeatureExtractor(precision="bf16", device="cpu")._precision() == "bf16"
    assert FeatureExtractor(precision="fp32", device="cuda")._precision() == "fp32"
    with pytest.raises(InvalidParameterError, match=r"int8.*CPU"):
        FeatureExtractor(precision="int8", device="cuda")._precision()


def test_cached_only_returns_what_the_cache_holds_and_computes_nothing(images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    none = _fx(cache).extract(images, cached_only=True)
    assert len(none.paths) == 0 and none.failures == []
    _fx(cache).extract(images[:2])
    some = _fx(cache).extract(images, cached_only=True)
    assert some.paths == [str(p) for p in images[:2]] and some.index.tolist() == [0, 1]
    assert cache.info()["entries"] == 2  # nothing new was stored
    full = _fx(cache).extract(images[:2])
    assert np.array_equal(some.features["pre_logits"], full.features["pre_logits"])
