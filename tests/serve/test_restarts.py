"""Restarts, crashes and shutdowns lose nothing; PostgreSQL serves like SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import (
    add_example,
    auth,
    make_keys,
    pattern,
    settings_for,
    start_server,
    trained_collection,
    wait_job,
)
from transferlab.serve import create_app
from transferlab.serve.store import Collection, Example, Job, Store


def test_restart_keeps_everything(tmp_path: Path) -> None:
    (a,) = make_keys(tmp_path, "alice")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        cid = trained_collection(client, a, n=3)
        before = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
        examples = client.get(f"/v1/collections/{cid}/examples", headers=auth(a)).json()
    with TestClient(create_app(settings_for(tmp_path))) as client:
        after = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
        assert after == before
        assert client.get(f"/v1/collections/{cid}/examples", headers=auth(a)).json() == examples
        job = client.get(f"/v1/jobs/{before['model']['job_id']}", headers=auth(a)).json()
        assert job["status"] == "succeeded" and job["progress"] == 1.0
        r = client.post(
            f"/v1/collections/{cid}/predict",
            headers=auth(a),
            files={"file": ("q.png", pattern("vstripes", 555), "image/png")},
        )
        assert r.status_code == 200 and r.json()["label"] == "vstripes"


def test_interrupted_job_is_failed_and_rerunnable(tmp_path: Path) -> None:
    store = Store(tmp_path)
    key, raw = store.create_key("alice")
    rng = np.random.default_rng(0)
    with store.session() as s:
        coll = Collection(
            owner_id=key.id,
            name="c",
            multi_label=False,
            backbone="efficientnet_lite0",
            layer="pre_logits",
        )
        s.add(coll)
        s.flush()
        for i in range(6):
            vec = (rng.normal(size=1280) + (3 if i % 2 else -3)).astype(np.float32)
            s.add(
                Example(
                    collection_id=coll.id,
                    labels=["a" if i % 2 else "b"],
                    image_sha256=f"{i:064x}",
                    image_ext="png",
                    feature=vec.tobytes(),
                    dim=1280,
                )
            )
        job = Job(
            collection_id=coll.id, kind="linear_probe", status="running", progress=0.5, params={}
        )
        s.add(job)
    store.close()
    with TestClient(create_app(settings_for(tmp_path))) as client:
        got = client.get(f"/v1/jobs/{job.id}", headers=auth(raw)).json()
        assert got["status"] == "failed" and "interrupted" in got["error"]
        r = client.post(f"/v1/collections/{coll.id}/train", headers=auth(raw))
        assert r.status_code == 202
        assert wait_job(client, r.json()["id"], raw)["status"] == "succeeded"


def test_shutdown_interrupts_a_running_finetune(tmp_path: Path) -> None:
    """A graceful stop (Ctrl+C, SIGTERM) does not wait for a long fine-tune: it stops at the next
    batch and the job reads failed/interrupted, re-runnable, exactly as after a crash."""
    (a,) = make_keys(tmp_path, "alice")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        cid = client.post("/v1/collections", headers=auth(a), json={"name": "s"}).json()["id"]
        for i in range(3):
            for kind in ("hstripes", "vstripes"):
                assert add_example(client, cid, a, pattern(kind, 70 + i), kind).status_code == 201
        r = client.post(
            f"/v1/collections/{cid}/train",
            headers=auth(a),
            json={"kind": "finetune", "epochs": 50, "image_size": 64},
        )
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (j := client.get(f"/v1/jobs/{job_id}", headers=auth(a)).json())["progress"] <= 0.1:
            assert j["status"] in ("queued", "running") and time.monotonic() < deadline, j
            time.sleep(0.05)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 30  # the lifespan's end did not run 50 epochs
    store = Store(tmp_path)
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and "interrupted" in (job.error or "")
    store.close()


def test_sigkill_during_training_loses_no_examples(tmp_path: Path) -> None:
    """A real `transferlab serve` process killed with SIGKILL right after a training job is
    accepted: after a restart every example is there, the job is either finished or marked failed
    as interrupted, and training again succeeds."""
    import signal
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    key = make_keys(tmp_path, "alice")[0]
    proc = start_server(tmp_path, port)
    try:
        with httpx.Client(base_url=base, headers=auth(key), timeout=60) as c:
            cid = c.post("/v1/collections", json={"name": "kill"}).json()["id"]
            for i in range(5):
                for kind in ("hstripes", "vstripes"):
                    r = c.post(
                        f"/v1/collections/{cid}/examples",
                        files={"file": ("x.png", pattern(kind, 300 + i), "image/png")},
                        data={"label": kind},
                    )
                    assert r.status_code == 201, r.text
            # a fine-tune long enough to be caught mid-run: killed once it reports progress
            r = c.post(
                f"/v1/collections/{cid}/train",
                json={"kind": "finetune", "epochs": 50, "image_size": 64},
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while (j := c.get(f"/v1/jobs/{job_id}").json())["progress"] <= 0.1:
                assert j["status"] in ("queued", "running"), j
                assert time.monotonic() < deadline, j
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)  # mid-training; no shutdown handler runs
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = start_server(tmp_path, port)
    try:
        with httpx.Client(base_url=base, headers=auth(key), timeout=60) as c:
            examples = c.get(f"/v1/collections/{cid}/examples").json()
            items = examples["items"] if isinstance(examples, dict) else examples
            assert len(items) == 10
            job = c.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "failed" and "interrupted" in job["error"], job
            assert c.get(f"/v1/collections/{cid}").json()["model"] is None  # nothing half-saved
            r = c.post(f"/v1/collections/{cid}/train")
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while (j := c.get(f"/v1/jobs/{r.json()['id']}").json())["status"] not in (
                "succeeded",
                "failed",
            ) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert j["status"] == "succeeded", j
            p = c.post(
                f"/v1/collections/{cid}/predict",
                files={"file": ("q.png", pattern("vstripes", 999), "image/png")},
            )
            assert p.status_code == 200, p.text
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_postgresql_service_and_restart(pg_url: str, tmp_path: Path) -> None:
    """The whole flow against PostgreSQL: examples, training, predict, metrics, isolation
    between keys, and a restart that keeps everything."""
    store = Store(tmp_path, pg_url)
    a, b = (store.create_key(n)[1] for n in ("alice", "bob"))
    store.close()
    settings = settings_for(tmp_path).model_copy(update={"db_url": pg_url})
    with TestClient(create_app(settings)) as client:
        cid = trained_collection(client, a, n=3)
        before = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
        assert client.get(f"/v1/collections/{cid}", headers=auth(b)).status_code == 404
        assert client.get("/v1/collections", headers=auth(b)).json() == []
        m = client.get(f"/v1/collections/{cid}/metrics", headers=auth(a))
        assert m.status_code == 200 and np.sum(m.json()["confusion"]) == 6
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/v1/collections/{cid}", headers=auth(a)).json() == before
        r = client.post(
            f"/v1/collections/{cid}/predict",
            headers=auth(a),
            files={"file": ("q.png", pattern("vstripes", 555), "image/png")},
        )
        assert r.status_code == 200 and r.json()["label"] == "vstripes", r.text
        assert client.delete(f"/v1/collections/{cid}", headers=auth(a)).status_code == 204
