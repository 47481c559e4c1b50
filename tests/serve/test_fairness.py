"""Many keys on one server (issue 21): per-key job limits, keys taking turns in the job queue,
cancelling a queued or running job, deleting a collection that has one, per-key collection and
request-rate limits."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import add_example, auth, make_keys, pattern, settings_for, wait_job


@pytest.fixture
def slow_jobs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Training jobs that run until released (or cancelled), recording the order they ran in:
    the queue's behaviour without minutes of training."""
    from transferlab.serve import jobs
    from transferlab.serve.store import Job

    state: dict[str, Any] = {"ran": [], "release": threading.Event()}

    def train(store: Any, batcher: Any, job_id: str, runner: Any) -> None:
        with store.session() as s:
            job = s.get(Job, job_id)
            job.status = "running"
            state["ran"].append(job.collection_id)
        try:
            while not state["release"].wait(0.01):
                runner.check(job_id)
        except jobs.Cancelled:
            jobs._set(store, job_id, status="cancelled", message="cancelled")
            return
        jobs._set(store, job_id, status="succeeded", progress=1.0, message="done")

    monkeypatch.setattr(jobs, "train_collection", train)
    return state


def _collection(client: TestClient, key: str, name: str) -> str:
    r = client.post("/v1/collections", headers=auth(key), json={"name": name})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    for i, kind in enumerate(("hstripes", "vstripes", "hstripes", "vstripes")):
        assert add_example(client, cid, key, pattern(kind, i), kind).status_code == 201
    return cid


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_key_trains_while_the_first_has_its_maximum(
    tmp_path: Path, slow_jobs: dict[str, Any]
) -> None:
    from transferlab.serve import create_app

    a, b = make_keys(tmp_path, "alice", "bob")
    settings = settings_for(tmp_path, max_jobs_per_key=2, queue_size=8)
    with TestClient(create_app(settings)) as client:
        a1, a2, a3 = (_collection(client, a, f"a{i}") for i in range(3))
        (b1,) = (_collection(client, b, "b1"),)
        jobs = {}
        for cid in (a1, a2):
            r = client.post(f"/v1/collections/{cid}/train", headers=auth(a))
            assert r.status_code == 202, r.text
            jobs[cid] = r.json()["id"]
        _wait(lambda: slow_jobs["ran"] == [a1])  # a1 runs, a2 waits
        full = client.post(f"/v1/collections/{a3}/train", headers=auth(a))
        assert full.status_code == 429 and "max_jobs_per_key=2" in full.json()["detail"]
        assert int(full.headers["retry-after"]) > 0
        r = client.post(f"/v1/collections/{b1}/train", headers=auth(b))
        assert r.status_code == 202, r.text  # the other key is not held back ...
        jobs[b1] = r.json()["id"]
        slow_jobs["release"].set()
        for cid, key in ((a1, a), (a2, a), (b1, b)):
            assert wait_job(client, jobs[cid], key)["status"] == "succeeded"
        assert slow_jobs["ran"] == [a1, b1, a2]  # ... and takes its turn before a2


def test_cancel_a_queued_and_a_running_job(tmp_path: Path, slow_jobs: dict[str, Any]) -> None:
    from transferlab.serve import create_app

    (a, b) = make_keys(tmp_path, "alice", "bob")
    with TestClient(create_app(settings_for(tmp_path, max_jobs_per_key=3))) as client:
        c1, c2, c3 = (_collection(client, a, f"c{i}") for i in range(3))
        ids = [
            client.post(f"/v1/collections/{c}/train", headers=auth(a)).json()["id"]
            for c in (c1, c2, c3)
        ]
        _wait(lambda: slow_jobs["ran"] == [c1])
        assert client.delete(f"/v1/jobs/{ids[1]}", headers=auth(b)).status_code == 404  # not b's
        r = client.delete(f"/v1/jobs/{ids[1]}", headers=auth(a))
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = client.delete(f"/v1/jobs/{ids[0]}", headers=auth(a))  # running: stops at its next step
        assert r.status_code == 200 and "cancelling" in r.json()["message"]
        assert wait_job(client, ids[0], a)["status"] == "cancelled"
        _wait(lambda: slow_jobs["ran"] == [c1, c3])  # the cancelled queued job never ran
        again = client.delete(f"/v1/jobs/{ids[0]}", headers=auth(a))
        assert again.status_code == 409 and again.json()["error"] == "job_ended"
        # deleting a collection whose job runs cancels it, then deletes
        assert client.delete(f"/v1/collections/{c3}", headers=auth(a)).status_code == 204
        assert client.get(f"/v1/jobs/{ids[2]}", headers=auth(a)).status_code == 404
        assert client.get(f"/v1/collections/{c3}", headers=auth(a)).status_code == 404
        models = tmp_path / "models" / c1
        assert not models.exists() or not any(models.iterdir())  # no half model


def test_per_key_collection_and_rate_limits(tmp_path: Path) -> None:
    from transferlab.serve import create_app

    a, b = make_keys(tmp_path, "alice", "bob")
    settings = settings_for(tmp_path, max_collections_per_key=1, rate_limit_per_minute=6)
    with TestClient(create_app(settings)) as client:
        assert (
            client.post("/v1/collections", headers=auth(a), json={"name": "x"}).status_code == 201
        )
        r = client.post("/v1/collections", headers=auth(a), json={"name": "y"})
        assert r.status_code == 403 and r.json()["error"] == "too_many_collections"
        codes = [client.get("/v1/collections", headers=auth(a)).status_code for _ in range(6)]
        assert codes[:4] == [200] * 4 and codes[-1] == 429
        r = client.get("/v1/collections", headers=auth(a))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "6 requests per minute" in r.json()["detail"]
        assert client.get("/v1/collections", headers=auth(b)).status_code == 200  # b's own budget
