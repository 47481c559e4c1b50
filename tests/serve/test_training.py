"""Training jobs (probe, fine-tune and auto), their split, queues and the cross-validated
metrics."""

from __future__ import annotations

import io
import itertools
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import add_example, auth, pattern, trained_collection, wait_job
from transferlab.serve.store import Example, Job, Store


def test_metrics_are_cached_until_the_examples_change(
    server: tuple[TestClient, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics cross-validates once per set of examples: repeated reads are served from memory,
    a new example makes the next read recompute."""
    import transferlab.serve.routers.training as routes

    client, (a, _, _) = server
    cid = trained_collection(client, a, n=3)
    calls = []
    real = routes.collection_metrics
    monkeypatch.setattr(routes, "collection_metrics", lambda *args: calls.append(1) or real(*args))
    url = f"/v1/collections/{cid}/metrics"
    first = client.get(url, headers=auth(a)).json()
    assert client.get(url, headers=auth(a)).json() == first
    assert len(calls) == 1 and np.sum(first["confusion"]) == 6
    assert add_example(client, cid, a, pattern("hstripes", 150), "hstripes").status_code == 201
    again = client.get(url, headers=auth(a)).json()
    assert len(calls) == 2 and np.sum(again["confusion"]) == 7


def test_simultaneous_train_requests_start_one_job(server: tuple[TestClient, list[str]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client, (a, _, _) = server
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "race"}).json()["id"]
    for i, kind in enumerate(("hstripes", "vstripes", "hstripes", "vstripes")):
        assert add_example(client, cid, a, pattern(kind, 600 + i), kind).status_code == 201
    with ThreadPoolExecutor(6) as pool:
        codes = list(
            pool.map(
                lambda _: client.post(f"/v1/collections/{cid}/train", headers=auth(a)).status_code,
                range(6),
            )
        )
    assert set(codes) <= {202, 409} and 202 in codes, codes
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    from sqlalchemy import select

    with store.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.collection_id == cid)))
    assert len(ids) == codes.count(202)  # each 202 is one job; each 409 added none
    for job_id in ids:
        assert wait_job(client, job_id, a)["status"] == "succeeded"
    with store.session() as s:
        jobs = sorted(
            s.scalars(select(Job).where(Job.collection_id == cid)), key=lambda j: j.created
        )
    # a later job was accepted only after the earlier one had ended
    for before, after in itertools.pairwise(jobs):
        assert after.created >= before.updated, (before.updated, after.created)


def test_multi_label_collection(server: tuple[TestClient, list[str]]) -> None:
    client, (a, _, _) = server
    r = client.post("/v1/collections", headers=auth(a), json={"name": "ml", "multi_label": True})
    cid = r.json()["id"]
    assert r.json()["multi_label"] is True
    sets = {"hstripes": "h", "vstripes": "v", "checker": "h;v"}
    for i in range(2):
        for kind, labels in sets.items():
            r = client.post(
                f"/v1/collections/{cid}/examples",
                headers=auth(a),
                files={"file": ("x.png", pattern(kind, 40 + i), "image/png")},
                data={"labels": labels},
            )
            assert r.status_code == 201, r.text
    assert r.json()["labels"] == ["h", "v"]
    r = client.post(f"/v1/collections/{cid}/train", headers=auth(a))
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["id"], a)["status"] == "succeeded"
    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", pattern("hstripes", 77), "image/png")},
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["labels"], list) and len(r.json()["top"]) == 2
    m = client.get(f"/v1/collections/{cid}/metrics", headers=auth(a))
    assert m.status_code == 200 and "mAP" in m.json()

    # fine-tuned the multi-label way: sigmoid head, per-label thresholds tuned on held-out images
    r = client.post(
        f"/v1/collections/{cid}/train",
        headers=auth(a),
        json={"kind": "finetune", "epochs": 1, "image_size": 64},
    )
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], a, timeout=300)
    assert job["status"] == "succeeded", job
    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", pattern("checker", 78), "image/png")},
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["labels"], list) and len(r.json()["top"]) == 2
    assert (
        r.json()["model_id"]
        == client.get(f"/v1/collections/{cid}", headers=auth(a)).json()["model"]["id"]
    )


def test_finetune_job(server: tuple[TestClient, list[str]]) -> None:
    """kind='finetune' trains the backbone itself (tiny here: 64 px, 1 epoch), reports progress,
    and leaves a model that predict and export use like a probe's."""
    client, (a, b, _) = server
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "ft"}).json()["id"]
    for i in range(4):
        for kind in ("hstripes", "vstripes"):
            assert add_example(client, cid, a, pattern(kind, 500 + i), kind).status_code == 201
    r = client.post(
        f"/v1/collections/{cid}/train",
        headers=auth(a),
        json={"kind": "finetune", "epochs": 1, "image_size": 64},
    )
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "finetune"
    job_id = r.json()["id"]
    seen = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(a)).json()
        seen.add(job["progress"])
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and len(seen) >= 2  # it moved, not only 0 -> 1
    coll = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
    assert coll["model"]["job_id"] == job_id and coll["model"]["classes"] == [
        "hstripes",
        "vstripes",
    ]

    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", pattern("vstripes", 901), "image/png")},
        data={"top_k": "2"},
    )
    assert r.status_code == 200, r.text
    pred = r.json()
    assert pred["label"] in ("hstripes", "vstripes") and len(pred["top"]) == 2
    assert abs(sum(t["probability"] for t in pred["top"]) - 1) < 1e-6
    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", b"not an image at all", "image/png")},
    )
    assert r.status_code == 415

    r = client.get(f"/v1/collections/{cid}/model", headers=auth(a))
    assert r.status_code == 200
    names = set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    assert {"model.json", "weights.safetensors", "metrics.json"} <= names
    # the export is a model directory the library loads and predicts with
    from transferlab.models import FinetunedModel, load_model

    out = Path(client.app.state.services.store.data_dir) / "tmp" / "export-test"  # type: ignore[attr-defined]
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(out)
    try:
        model = load_model(out, progress=False)
        assert isinstance(model, FinetunedModel) and model.image_size == 64
    finally:
        import shutil

        shutil.rmtree(out)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(b)).status_code == 404


def test_split_examples_holds_out_each_label() -> None:
    from transferlab.serve.jobs import split_examples

    ex = [Example(labels=[lab]) for lab in "aaaaabbbc"]
    train, val, note = split_examples(ex, multi_label=False)
    assert sorted(e.labels[0] for e in val) == ["a", "b"]  # 'c' has one image: kept for training
    assert len(train) + len(val) == 9 and "validation" in note
    train, val, note = split_examples([ex[0], ex[5]], multi_label=False)
    assert "training images" in note and len(val) == 2  # nothing to hold out: said so
    # multi-label: a label on one example only must stay in training, whatever the draw
    for seed in range(20):
        ml = [Example(labels=["a"]), Example(labels=["a", "b"]), Example(labels=["a"]),
              Example(labels=["c"]), Example(labels=["a", "c"])]  # fmt: skip
        train, val, note = split_examples(ml, multi_label=True, seed=seed)
        assert {lab for e in train for lab in e.labels} == {"a", "b", "c"}, seed
        # held out at random, or (nothing could be) validated on the training images, and said so
        assert len(train) + len(val) == 5 if "held out" in note else len(val) == 5, note


def test_full_queues_refuse_instead_of_growing() -> None:
    """Bounded queues: a full feature queue is 503, a full training queue 429."""
    import threading

    from transferlab.serve.batcher import FeatureBatcher
    from transferlab.serve.errors import ApiError
    from transferlab.serve.jobs import JobRunner

    release = threading.Event()

    class SlowExtractor:
        pool = "avg"

        def extract(self, paths: list[str], **_: Any) -> Any:
            release.wait(10)
            raise RuntimeError("stub")

    batcher = FeatureBatcher(SlowExtractor(), max_batch=1, wait_s=0, queue_size=1)  # type: ignore[arg-type]
    first = batcher.submit(["a"], ["pre_logits"])
    deadline = time.monotonic() + 5
    while batcher._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker has taken the first request and is stuck in it
    batcher.submit(["b"], ["pre_logits"])
    with pytest.raises(ApiError) as err:
        batcher.submit(["c"], ["pre_logits"])
    assert err.value.status == 503
    release.set()
    with pytest.raises(RuntimeError):
        first.result(timeout=10)  # the extractor's failure reaches the waiting request
    batcher.stop()

    runner = JobRunner.__new__(JobRunner)  # the queue alone, no worker draining it
    runner.queue_size, runner._lines, runner._cv = 2, {}, threading.Condition()
    runner.submit("job-1", owner=1)
    runner.submit("job-2", owner=2)
    with pytest.raises(ApiError) as err:
        runner.submit("job-3", owner=3)  # the total waiting is bounded, whoever asks
    assert err.value.status == 429
    assert runner.waiting == 2


def test_metrics_of_a_trained_collection(
    server: tuple[TestClient, list[str]], trained: str
) -> None:
    """Cross-validated metrics over all 8 examples of the trained collection."""
    client, (a, _, _) = server
    cid = trained
    m = client.get(f"/v1/collections/{cid}/metrics", headers=auth(a)).json()
    assert m["classes"] == ["hstripes", "vstripes"] and m["accuracy"] >= 0.75
    assert np.sum(m["confusion"]) == 8


def _fast_auto(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the shared server's auto jobs at the random-weight test network (`FAST_AUTO`)."""
    from tests.serve._client import FAST_AUTO

    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    for name, value in FAST_AUTO.items():
        monkeypatch.setattr(settings, name, value)


def test_auto_job(server: tuple[TestClient, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """kind='auto' runs `run_auto` on the collection's images within budget_s, shows its stages
    as the job's message, names what it kept, and leaves that model as the collection's:
    predict answers as the exported model does, and the export is the run's model folder."""
    from transferlab.models import load_model

    client, (a, b, _) = server
    _fast_auto(client, monkeypatch)
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "auto"}).json()["id"]
    for i in range(4):
        for kind in ("hstripes", "vstripes"):
            assert add_example(client, cid, a, pattern(kind, 700 + i), kind).status_code == 201
    r = client.post(
        f"/v1/collections/{cid}/train", headers=auth(a), json={"kind": "auto", "budget_s": 90}
    )
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "auto" and r.json()["result"] is None
    job_id = r.json()["id"]
    messages = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(a)).json()
        messages.append(job["message"])
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    assert any(m and m.startswith("auto [") and "/ 90 s]" in m for m in messages), messages
    result = job["result"]
    chosen = result["chosen"]
    # 3 training images a label: too few to fine-tune, so a probe on one of the network's taps
    assert chosen["kind"] == "probe" and chosen["name"].startswith("probe test_resnet/")
    assert f"chose {chosen['name']}" in job["message"] and 0 <= result["accuracy"] <= 1
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    with store.session() as s:
        assert s.get(Job, job_id).params == {
            "budget_s": 90.0,
            "backbones": ["test_resnet"],
            "weights": "random",
        }
    coll = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
    assert coll["model"]["job_id"] == job_id and coll["model"]["id"] == result["model_id"]
    assert coll["model"]["chosen"] == chosen and coll["model"]["accuracy"] == result["accuracy"]

    r = client.get(f"/v1/collections/{cid}/model", headers=auth(a))
    assert r.status_code == 200
    out = Path(store.data_dir) / "tmp" / "auto-export-test"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "auto" and metrics["chosen"]["name"] == chosen["name"]
    assert metrics["n_val"] == 2 and metrics["budget"]["budget_s"] == 90  # 1 a label held out
    ft = [c for c in metrics["candidates"] if c["kind"] == "finetune"]
    assert ft and all("not started" in c["why"] for c in ft)

    query = store.data_dir / "tmp" / "auto-query.png"
    query.write_bytes(pattern("vstripes", 990))
    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", query.read_bytes(), "image/png")},
        data={"top_k": "2"},
    )
    assert r.status_code == 200, r.text
    pred = r.json()
    assert pred["model_id"] == result["model_id"]
    assert abs(sum(t["probability"] for t in pred["top"]) - 1) < 1e-6
    try:  # the service predicts with the model it saved: as the library does with the export
        (lib,) = load_model(out, progress=False).predict_paths([str(query)], top_k=2)
        assert [t["label"] for t in pred["top"]] == [c for c, _ in lib.top]
        assert np.allclose([t["probability"] for t in pred["top"]], [p for _, p in lib.top])
    finally:
        import shutil

        shutil.rmtree(out)
        query.unlink()
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(b)).status_code == 404


def test_auto_job_failures_are_the_jobs(
    server: tuple[TestClient, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data auto cannot use ends the job as failed, saying why: a label with fewer than 3
    images (one is held out), or a multi-label collection."""
    client, (a, _, _) = server
    _fast_auto(client, monkeypatch)
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "few"}).json()["id"]
    for i, kind in enumerate(("hstripes", "vstripes", "hstripes", "vstripes", "vstripes")):
        assert add_example(client, cid, a, pattern(kind, 800 + i), kind).status_code == 201
    r = client.post(f"/v1/collections/{cid}/train", headers=auth(a), json={"kind": "auto"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], a)
    assert job["status"] == "failed" and job["result"] is None, job
    assert "at least 3 images of each label" in job["error"], job
    assert "'hstripes' has 2" in job["error"] and "vstripes" not in job["error"], job
    assert client.get(f"/v1/collections/{cid}", headers=auth(a)).json()["model"] is None

    r = client.post("/v1/collections", headers=auth(a), json={"name": "ml", "multi_label": True})
    mid = r.json()["id"]
    for i, (kind, labels) in enumerate((("hstripes", "h"), ("vstripes", "v"), ("checker", "h;v"))):
        r = client.post(
            f"/v1/collections/{mid}/examples",
            headers=auth(a),
            files={"file": ("x.png", pattern(kind, 850 + i), "image/png")},
            data={"labels": labels},
        )
        assert r.status_code == 201, r.text
    r = client.post(f"/v1/collections/{mid}/train", headers=auth(a), json={"kind": "auto"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], a)
    assert job["status"] == "failed" and "single-label" in job["error"], job


def test_bad_budget_is_422(server: tuple[TestClient, list[str]], trained: str) -> None:
    """budget_s must be a positive number of seconds within the server's max_auto_budget_s,
    and is for kind='auto' only; each refusal is a 422 naming the field and starts no job."""
    client, (a, _, _) = server
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    from sqlalchemy import func, select

    def n_jobs() -> int:
        with store.session() as s:
            return int(s.scalar(select(func.count()).where(Job.collection_id == trained)) or 0)

    before = n_jobs()
    cases = {
        "zero": ({"kind": "auto", "budget_s": 0}, "greater than 0"),
        "negative": ({"kind": "auto", "budget_s": -5}, "greater than 0"),
        "over the cap": ({"kind": "auto", "budget_s": 3601}, "at most 3600 seconds"),
        "not a number": ({"kind": "auto", "budget_s": "soon"}, "number"),
        "another kind": (
            {"kind": "linear_probe", "budget_s": 60},
            "not a field of kind='linear_probe'",
        ),
    }
    for what, (body, needle) in cases.items():
        r = client.post(f"/v1/collections/{trained}/train", headers=auth(a), json=body)
        assert r.status_code == 422, (what, r.text)
        err = r.json()
        assert err["error"] == "invalid_request" and err["detail"].startswith("budget_s"), what
        assert needle in err["detail"], (what, err)
    assert n_jobs() == before

    doc = client.get("/openapi.json").json()
    spec = doc["components"]["schemas"]
    body = doc["paths"]["/v1/collections/{collection_id}/train"]["post"]["requestBody"]
    shapes = body["content"]["application/json"]["schema"]
    refs = json.dumps(shapes)
    assert all(
        f"#/components/schemas/{n}" in refs for n in ("ProbeTrain", "FinetuneTrain", "AutoTrain")
    )
    assert spec["AutoTrain"]["properties"]["kind"]["const"] == "auto"
    assert "budget_s" not in spec["ProbeTrain"]["properties"]  # one shape per kind
    budget = spec["AutoTrain"]["properties"]["budget_s"]
    assert {"type": "number", "exclusiveMinimum": 0.0} in budget["anyOf"]
    assert "max_auto_budget_s" in budget["description"]
    assert "chosen" in spec["JobResult"]["properties"]


def test_auto_params_follow_the_settings(tmp_path: Path) -> None:
    """No budget_s: the server's default, never above its cap; no auto_backbones: the
    collection's own backbone with the server's weights."""
    from transferlab.serve import Settings
    from transferlab.serve.errors import ApiError
    from transferlab.serve.routers.training import auto_params
    from transferlab.serve.schemas import AutoTrain
    from transferlab.serve.store import Collection

    coll = Collection(backbone="efficientnet_lite0")
    req = AutoTrain(kind="auto")
    assert auto_params(req, Settings(data_dir=tmp_path), coll) == {
        "budget_s": 600.0,
        "backbones": ["efficientnet_lite0"],
        "weights": "default",
    }
    capped = Settings(data_dir=tmp_path, max_auto_budget_s=120, auto_backbones=["a", "b"])
    assert auto_params(req, capped, coll)["budget_s"] == 120
    assert auto_params(req, capped, coll)["backbones"] == ["a", "b"]
    with pytest.raises(ApiError, match="at most 120 seconds"):
        auto_params(AutoTrain(kind="auto", budget_s=121), capped, coll)


def test_auto_job_stops_at_the_next_stage_on_shutdown(server: tuple[TestClient, list[str]]) -> None:
    """A server shutting down stops an auto run at its next stage line (then the job is marked
    interrupted, as a fine-tune is); no model is recorded."""
    import threading
    from types import SimpleNamespace

    from sqlalchemy import select

    from transferlab.serve.jobs import Interrupted, JobRunner, auto_collection
    from transferlab.serve.store import Collection, StoredModel

    client, (a, _, _) = server
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "stop"}).json()["id"]
    for i in range(3):
        for kind in ("hstripes", "vstripes"):
            assert add_example(client, cid, a, pattern(kind, 880 + i), kind).status_code == 201
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    with store.session() as s:
        coll = s.get(Collection, cid)
        examples = list(coll.examples)
    stopping = threading.Event()
    stopping.set()
    runner = SimpleNamespace(stopping=stopping, device="cpu", _cancelled=set())
    runner.check = lambda job_id: JobRunner.check(runner, job_id)  # type: ignore[arg-type]
    params = {"budget_s": 60.0, "backbones": ["test_resnet"], "weights": "random"}
    with pytest.raises(Interrupted):
        auto_collection(store, coll, examples, "0" * 32, params, runner)
    with store.session() as s:
        assert not list(s.scalars(select(StoredModel).where(StoredModel.collection_id == cid)))
