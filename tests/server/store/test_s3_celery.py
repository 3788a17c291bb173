"""Blobs on S3 with the scaled setup: the API and a `phaseboard worker` (Celery on Redis,
PostgreSQL) share nothing but the bucket, the database and the broker.

The worker gets a local directory of its own, so every checkpoint it analyses must come
from the object store (into its bounded read cache), as on a GPU machine elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from phaseboard.analysis.checkpoints import save_safetensors_bytes
from phaseboard.server.app import create_app
from phaseboard.server.blob_gc import collect_garbage
from phaseboard.server.db import Database
from phaseboard.server.settings import Settings
from tests.server.jobs.conftest import TINY_LLC, TINY_TASK, all_final, state_dict, wait_for
from tests.server.jobs.test_celery import Workers, celery_redis_url  # noqa: F401 - fixture
from tests.server.store.conftest import S3Endpoint

pytestmark = [
    pytest.mark.parametrize("backend", ["postgres"]),
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
]


@pytest.fixture
def scaled(make_settings, celery_redis_url: str, bucket: str) -> Settings:  # noqa: F811
    return make_settings(
        queue="celery",
        redis_url=celery_redis_url,
        blob_url=f"s3://{bucket}/blobs",
        auto_analyses="llc",
        heartbeat_s=0.2,
        stale_after_s=2.0,
    )


@pytest.fixture
def remote_worker(
    scaled: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Workers]:
    """`phaseboard worker` processes with the blob URL and a local directory of their own."""
    monkeypatch.setenv("PHASEBOARD_BLOB_URL", scaled.blob_url)
    (tmp_path / "logs").mkdir()
    own = scaled.model_copy(update={"storage_dir": tmp_path / "worker-disk"})
    workers = Workers(own, tmp_path / "logs")
    try:
        yield workers
    finally:
        workers.close()


def test_worker_on_another_disk_analyses_checkpoints_from_s3_and_gc_cleans_up(
    scaled: Settings,
    remote_worker: Workers,
    s3_endpoint: S3Endpoint,
    bucket: str,
    tmp_path: Path,
) -> None:
    with TestClient(create_app(scaled)) as client:
        run = client.post(
            "/api/runs",
            json={
                "name": "remote",
                "task": "dln",
                "task_config": TINY_TASK,
                "analysis_config": {"llc": TINY_LLC},
            },
        ).json()
        weights = {step: save_safetensors_bytes(state_dict(i)) for i, step in enumerate([10, 100])}
        weights[5] = weights[100]  # a branch serving the final weights
        uploaded = {}
        for step in (5, 10, 100):
            resp = client.post(
                f"/api/runs/{run['id']}/checkpoints",
                files={"file": (f"step{step}.safetensors", weights[step])},
                data={"step": str(step)},
            )
            assert resp.status_code == 201, resp.text
            uploaded[step] = resp.json()
        assert len(s3_endpoint.blob_keys(bucket)) == 2
        remote_worker.start("cpu")
        db = Database(scaled)
        try:
            jobs = wait_for(
                db,
                lambda js: all_final(js) and any(j.kind == "llc" and j.state == "done" for j in js),
                timeout=120,
            )
        except BaseException:
            print(remote_worker.logs())
            raise
        llc = {j.checkpoint_id: j for j in jobs if j.kind == "llc"}
        table = [(j.checkpoint_id, j.state, j.progress_msg, j.error) for j in llc.values()]
        # Step 5 was queued on upload, then cancelled when step 100 showed the same weights.
        assert llc[uploaded[5]["id"]].state == "cancelled", table
        assert llc[uploaded[5]["id"]].progress_msg == "skipped: the same weights as step 100"
        assert llc[uploaded[10]["id"]].state == llc[uploaded[100]["id"]].state == "done", table
        flagged = client.get(f"/api/checkpoints/{uploaded[5]['id']}").json()
        assert flagged["duplicate_of_step"] == 100
        assert [c["step"] for c in client.get(f"/api/runs/{run['id']}/llc").json()["points"]] == [
            10,
            100,
        ]
        cache = tmp_path / "worker-disk" / "cache"
        assert sorted(p.name for p in cache.iterdir() if not p.name.startswith("fetch-")) == sorted(
            {uploaded[10]["sha256"], uploaded[100]["sha256"]}
        )
        api_disk = Path(scaled.storage_dir)  # type: ignore[arg-type]
        assert not [p for p in api_disk.rglob("*") if p.is_file()]  # the API kept no bytes
        got = client.get(uploaded[10]["download_url"])
        assert got.status_code == 200 and got.content == weights[10]

        assert client.delete(f"/api/runs/{run['id']}").status_code == 204
        try:
            report = collect_garbage(db, client.app.state.store, min_age_s=0)  # type: ignore[attr-defined]
        finally:
            db.dispose()
    assert len(report.removed) == 2 and s3_endpoint.keys(bucket) == []
