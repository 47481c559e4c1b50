"""Ray Data extraction (`transferlab extract --engine ray`) on a local 2-CPU Ray cluster.

One cluster and one first extraction serve the whole module (starting Ray and its actors costs
most of the time here); the tests that need no cluster (listings, argument errors) run without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.cli import app
from transferlab.exceptions import (
    DatasetError,
    DatasetNotFoundError,
    ImageLoadError,
    InvalidParameterError,
)
from transferlab.features import FeatureExtractor, file_digest
from transferlab.features import ray as _ray
from transferlab.features.ray import (
    CRASH_ENV,
    RayExtractionResult,
    extract_with_ray,
    list_sources,
    load_shards,
)

SHARD = 8  # = batch size: the single-process path then sees the same batches


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images 64x64 in two classes (PNG and JPEG) and one broken file: 4 shards of 8 + 1."""
    root = tmp_path_factory.mktemp("ray-images")
    build_image_folder(root, classes=("hstripes",), n_per_class=12, seed=3)
    build_image_folder(root, classes=("vstripes",), n_per_class=12, seed=4, ext=".jpg")
    (root / "vstripes" / "zz_broken.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="module")
def ray_cluster() -> object:
    ray = pytest.importorskip(
        "ray", reason="Ray is an optional extra: pip install 'transferlab[ray]'"
    )
    pytest.importorskip("ray.data", reason="Ray Data is missing: pip install 'ray[data]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def first_run(ray_cluster: object, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extraction every cluster test starts from, run through the CLI with 2 workers."""
    out = tmp_path_factory.mktemp("ray-out") / "feats"
    res = CliRunner().invoke(
        app,
        [
            "extract", str(images), "--engine", "ray", "--out", str(out),
            "--shard-size", str(SHARD), "--batch-size", str(SHARD), "--ray-workers", "2",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "wrote 24 vectors of 1280 floats in 4 shards" in res.output
    assert "4 shards computed by 2 workers" in res.output
    return out


def _reference(paths: list[str]) -> np.ndarray:
    fx = FeatureExtractor(
        batch_size=SHARD, num_workers=0, cache=False, progress=False, engine="torch"
    )
    res = fx.extract(paths)
    assert res.failures == []
    return res.features["pre_logits"]


def test_vectors_match_single_process(first_run: Path, images: Path) -> None:
    got = load_shards(first_run)
    assert got["meta"]["complete"] is True and got["meta"]["n_rows"] == 24
    paths = sorted(str(p) for p in images.rglob("*") if p.suffix in (".png", ".jpg"))
    paths.remove(str(images / "vstripes" / "zz_broken.jpg"))
    assert got["paths"] == paths  # sorted listing, the broken file left out, each image once
    assert got["digests"] == [file_digest(p) for p in paths]
    assert got["labels"] == ["hstripes"] * 12 + ["vstripes"] * 12
    assert set(got["splits"]) == {"train", "val"}
    np.testing.assert_allclose(got["X"], _reference(paths), rtol=1e-5, atol=1e-5)
    # the broken image is recorded in its shard's metadata
    meta = _ray._shard_meta(first_run / "part-00003.parquet")
    assert meta is not None
    assert [f[0] for f in meta["failures"]] == [str(images / "vstripes" / "zz_broken.jpg")]


@pytest.fixture(scope="module")
def resumed_after_crash(
    first_run: Path, images: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, RayExtractionResult, dict[str, int], Path]:
    """A copy of the first run with shards 1 and 3 deleted, run again by one worker that the
    test hook kills while it works on shard 3 (Ray restarts it and retries the shard).

    One run serves both the resume and the killed-worker tests: each run costs actor start-ups
    (import torch, load the model), the bulk of this module's time on a small machine.
    """
    tmp = tmp_path_factory.mktemp("ray-resume")
    out = tmp / "feats"
    shutil.copytree(first_run, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    (out / "part-00001.parquet").unlink()
    (out / "part-00003.parquet").unlink()
    marker = tmp / "crashed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CRASH_ENV, f"3:{marker}")
        res = extract_with_ray(
            images, out, shard_size=SHARD, batch_size=SHARD, workers=1, progress=False
        )
    return out, res, mtimes, marker


def test_rerun_recomputes_only_missing_shards(
    resumed_after_crash: tuple[Path, RayExtractionResult, dict[str, int], Path],
    first_run: Path,
    images: Path,
) -> None:
    out, res, mtimes, _ = resumed_after_crash
    assert res.shards_computed == [1, 3] and res.shards_skipped == [0, 2]
    assert 0 < res.first_shard_seconds < res.seconds
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert after.keys() == mtimes.keys()
    assert {k for k in after if after[k] != mtimes[k]} == {
        "part-00001.parquet",
        "part-00003.parquet",
    }
    # nothing missing: nothing to do, Ray not even started
    res = extract_with_ray(images, out, shard_size=SHARD, batch_size=SHARD, progress=False)
    assert res.shards_computed == [] and res.workers == 0 and res.n_rows == 24
    assert len(res.failures) == 1  # the broken image, read back from its shard's metadata
    # --strict on a folder a lenient run finished still refuses the broken image it holds
    with pytest.raises(ImageLoadError, match=r"zz_broken\.jpg"):
        extract_with_ray(
            images, out, shard_size=SHARD, batch_size=SHARD, progress=False, on_error="raise"
        )
    assert load_shards(out)["meta"]["complete"] is True  # the refusal changed nothing


def test_killed_worker_loses_and_duplicates_no_rows(
    resumed_after_crash: tuple[Path, RayExtractionResult, dict[str, int], Path],
    first_run: Path,
) -> None:
    out, res, _, marker = resumed_after_crash
    assert marker.exists(), "the test hook did not kill the worker"
    assert res.n_rows == 24 and len(res.failures) == 1  # the broken image, reported once
    got, ref = load_shards(out), load_shards(first_run)
    assert got["paths"] == ref["paths"] and len(set(got["paths"])) == 24
    assert got["digests"] == ref["digests"]
    np.testing.assert_allclose(got["X"], ref["X"], rtol=1e-5, atol=1e-5)


def test_strict_rerun_recomputes_a_shard_whose_broken_image_was_repaired(
    ray_cluster: object, tmp_path: Path
) -> None:
    """A lenient run leaves a broken image out; --strict over that folder refuses while the file
    is still broken, and once it is repaired recomputes its shard with it (no --overwrite)."""
    root = build_image_folder(tmp_path / "imgs", classes=("hstripes",), n_per_class=3, seed=5)
    broken = root / "hstripes" / "zz_broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "feats"
    kw = {"shard_size": 2, "batch_size": 2, "workers": 1, "progress": False}
    first = extract_with_ray(root, out, **kw)
    assert first.n_rows == 3 and [f.path for f in first.failures] == [str(broken)]
    with pytest.raises(ImageLoadError, match=r"zz_broken\.png"):
        extract_with_ray(root, out, on_error="raise", **kw)
    assert load_shards(out)["meta"]["complete"] is True  # the refusal changed nothing
    shutil.copy(root / "hstripes" / sorted(os.listdir(root / "hstripes"))[0], broken)
    fixed = extract_with_ray(root, out, on_error="raise", **kw)
    assert fixed.shards_computed == [1] and fixed.shards_skipped == [0]
    assert fixed.n_rows == 4 and fixed.failures == []
    assert str(broken) in load_shards(out)["paths"]


def test_other_extraction_in_out_dir_is_refused(
    ray_cluster: object, first_run: Path, images: Path
) -> None:
    with pytest.raises(InvalidParameterError, match=r"differs in: .*layer"):
        extract_with_ray(images, first_run, layer="stage3", shard_size=SHARD, progress=False)


# -- no cluster needed ---------------------------------------------------------------------------
def test_parquet_listing_and_file_url(images: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    listing = tmp_path / "listing.parquet"
    pq.write_table(
        pa.table({"path": ["vstripes/vstripes_1.jpg", str(images / "hstripes" / "hstripes_0.png")],
                  "label": ["v", None]}),
        listing,
    )  # fmt: skip
    items = list_sources(listing)  # relative paths are taken from the listing's folder
    assert {it.path: it.label for it in items} == {
        str(tmp_path / "vstripes" / "vstripes_1.jpg"): "v",
        str(images / "hstripes" / "hstripes_0.png"): "",
    }

    pytest.importorskip("fsspec")
    urls = list_sources(images.as_uri())  # file:// through fsspec, labelled by subfolder
    assert len(urls) == 25 and all(it.path.startswith("file://") for it in urls)
    assert {it.label for it in urls} == {"hstripes", "vstripes"}
    assert _ray._localize(urls[0].path, str(tmp_path), 0) == urls[0].path[len("file://") :]


def test_remote_url_is_fetched_to_a_local_copy(tmp_path: Path, images: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    src = images / "hstripes" / "hstripes_0.png"
    with fsspec.open("memory://bucket/a/x.png", "wb") as fh:
        fh.write(src.read_bytes())
    local = _ray._localize("memory://bucket/a/x.png", str(tmp_path), 7)
    assert local.endswith("7.png") and file_digest(local) == file_digest(src)
    with pytest.raises(Exception, match="cannot fetch"):
        _ray._localize("memory://bucket/missing.png", str(tmp_path), 8)


def test_cli_errors_without_traceback(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    for out, message in [(a_file, "is a file"), (tmp_path / "f.npz", "folder of Parquet shards")]:
        res = runner.invoke(app, ["extract", str(images), "--engine", "ray", "--out", str(out)])
        assert res.exit_code == 2 and message in res.output, res.output
        assert "Traceback" not in res.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = runner.invoke(
        app, ["extract", str(images), "--engine", "ray", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "pip install 'transferlab[ray]'" in res.output, res.output


def test_parameter_checks(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="shard_size"):
        extract_with_ray(tmp_path, tmp_path / "o", shard_size=0)
    with pytest.raises(InvalidParameterError, match="on_error"):
        extract_with_ray(tmp_path, tmp_path / "o", on_error="ignore")
    with pytest.raises(InvalidParameterError, match="precision"):
        extract_with_ray(tmp_path, tmp_path / "o", precision="auto")


def test_other_precision_is_another_extraction(tmp_path: Path) -> None:
    """fp32 and bf16 shards never mix in one folder: a re-run with the other precision is
    refused (or replaces the shards with --overwrite), like one with another layer."""
    out = tmp_path / "o"
    _ray._prepare_out_dir(out, {"layer": "pre_logits", "precision": "fp32"}, overwrite=False)
    with pytest.raises(InvalidParameterError, match=r"differs in: precision"):
        _ray._prepare_out_dir(out, {"layer": "pre_logits", "precision": "bf16"}, overwrite=False)


def test_folder_of_someone_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    manifest = {"layer": "pre_logits"}
    with pytest.raises(InvalidParameterError, match="not empty"):
        _ray._prepare_out_dir(tmp_path / "o", manifest, overwrite=True)
    _ray._prepare_out_dir(tmp_path / "new", manifest, overwrite=False)
    assert json.loads((tmp_path / "new" / _ray.MANIFEST_NAME).read_text())["complete"] is False
    with pytest.raises(DatasetError):
        list_sources(os.fspath(tmp_path / "new"))


def test_load_shards_refuses_an_unfinished_folder(tmp_path: Path) -> None:
    """An interrupted run leaves complete: false (and maybe stale shards of an older listing):
    reading it must fail, not return part of the rows."""
    out = tmp_path / "o"
    _ray._prepare_out_dir(out, {"layer": "pre_logits", "dim": 2, "n_shards": 2}, overwrite=False)
    items = [["/a.png", "x", "train"]]
    _ray._write_shard(
        _ray._shard_path(out, 0), items, [[0, "d"]], np.ones((1, 2), np.float32), 2, {}
    )
    with pytest.raises(DatasetError, match="did not finish"):
        load_shards(out)
    manifest = json.loads((out / _ray.MANIFEST_NAME).read_text())
    _ray._write_json(out / _ray.MANIFEST_NAME, {**manifest, "complete": True})
    with pytest.raises(DatasetError, match=r"part-00001\.parquet"):  # shard 1 of 2 is missing
        load_shards(out)
    _ray._write_json(out / _ray.MANIFEST_NAME, {**manifest, "complete": True, "n_shards": 1})
    got = load_shards(out)
    assert got["paths"] == ["/a.png"] and got["X"].tolist() == [[1.0, 1.0]]


def test_unreadable_listings_are_clear_errors(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    fake = tmp_path / "listing.parquet"
    fake.write_text("path\nx.png\n")  # a CSV under a .parquet name
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        list_sources(fake)
    pytest.importorskip("fsspec")
    with pytest.raises(DatasetNotFoundError, match="no such listing"):
        list_sources("memory://bucket/none/listing.parquet")
    with pytest.raises(InvalidParameterError, match="cannot open"):
        list_sources("nosuchprotocol://bucket/listing.parquet")
