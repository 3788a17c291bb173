"""The embedded engine end to end on SQLite: rows + blobs -> local pool -> results.

Most run the default pool (worker threads); those marked ``local_pool="processes"`` run a
child process per general worker, which must behave the same and survive a worker's death."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.local import LocalQueue
from phaseboard.server.models import Job, PhaseBoundary, utcnow
from phaseboard.server.storage import BlobStore
from tests.server.jobs.conftest import all_final, fast_settings, results_by_job, seed_run, wait_for

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_local_pool_runs_new_checkpoints_batches_llc_and_redetects_phases(make_settings) -> None:
    settings = fast_settings(
        make_settings, local_pool="processes", queue="local", auto_analyses="llc,metrics"
    )
    run_id, ckpts = seed_run(settings, [1, 10, 100, 1000])
    app = create_app(settings, start_workers=False)
    queue, db = app.state.queue, app.state.db
    with db.session() as s:  # a manual boundary survives re-detection
        s.add(PhaseBoundary(run_id=run_id, step=50.0, source="manual", kind="manual", manual=True))
    # Planned before the pool starts, so the four LLC jobs are queued together.
    ids = queue.checkpoints_added(run_id, ckpts)
    assert len(ids) == 8
    with TestClient(app) as client:
        queue.start()
        jobs = wait_for(db, lambda js: all_final(js) and any(j.kind == "phases" for j in js))
        assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]
        results = results_by_job(db)
        assert all(len(results[j.id]) == 1 for j in jobs)
        llc_jobs = [j for j in jobs if j.kind == "llc"]
        assert [results[j.id][0].values["batch"] for j in llc_jobs] == [4, 4, 4, 4]
        assert len({j.worker_id for j in llc_jobs}) == 1
        # ... in a worker process of this server, not in one of its threads.
        assert _pid(llc_jobs[0]) in {p.pid for p in psutil.Process().children()}

        llc = client.get(f"/api/runs/{run_id}/llc").json()["points"]
        assert [p["step"] for p in llc] == [1, 10, 100, 1000]
        assert all(p["mean"] is not None and len(p["per_chain"]) == 2 for p in llc)
        metrics = client.get(f"/api/runs/{run_id}/results", params={"kind": "metrics"}).json()
        assert len(metrics["results"]) == 4 and "train_loss" in metrics["results"][0]["values"]
        listed = client.get("/api/jobs", params={"run_id": run_id, "state": "done"}).json()
        assert listed["total"] == len(jobs) and listed["counts"]["done"] == len(jobs)
    with db.session() as s:
        manual = s.scalars(sa.select(PhaseBoundary).where(PhaseBoundary.manual.is_(True))).all()
        assert [b.step for b in manual] == [50.0]


def test_wrong_shape_checkpoint_fails_naming_tensors_and_others_finish(make_settings) -> None:
    settings = fast_settings(make_settings, queue="local", auto_analyses="llc")
    run_id, ckpts = seed_run(settings, [1, 10, 100], bad_steps=(10,))
    app = create_app(settings, start_workers=False)
    app.state.queue.checkpoints_added(run_id, ckpts)
    with TestClient(app):
        app.state.queue.start()
        jobs = wait_for(app.state.db, lambda js: all_final([j for j in js if j.kind == "llc"]))
    by_ckpt = {j.checkpoint_id: j for j in jobs if j.kind == "llc"}
    bad = by_ckpt[ckpts[1]]
    assert bad.state == "failed"
    assert "layers.0.weight" in bad.error and "(3, 4)" in bad.error and "(3, 3)" in bad.error
    assert by_ckpt[ckpts[0]].state == by_ckpt[ckpts[2]].state == "done"
    assert ckpts[1] not in {
        r.checkpoint_id for rs in results_by_job(app.state.db).values() for r in rs
    }


def test_cancel_running_job_then_retry_runs_it_to_done(make_settings) -> None:
    settings = fast_settings(make_settings, queue="local")
    run_id, _ = seed_run(settings, [1])
    app = create_app(settings)
    with TestClient(app) as client:
        (job_id,) = app.state.queue.plan_and_enqueue(run_id, ["sleep"], config={"seconds": 30})
        wait_for(app.state.db, lambda js: js[0].state == "running" and js[0].progress > 0)
        resp = client.post(f"/api/jobs/{job_id}/cancel")
        assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
        # The worker notices at its next progress report and drops the job.
        wait_for(app.state.db, lambda js: js[0].progress_msg == "cancelled", timeout=5)
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 409
        assert results_by_job(app.state.db) == {}
        with app.state.db.session() as s:  # retry with a short sleep this time
            s.get(Job, job_id).config = {"seconds": 0.1}
        resp = client.post(f"/api/jobs/{job_id}/retry")
        assert resp.status_code == 200 and resp.json()["state"] == "queued"
        jobs = wait_for(app.state.db, lambda js: js[0].state == "done", timeout=10)
        assert jobs[0].attempts == 1 and len(results_by_job(app.state.db)[job_id]) == 1
        assert client.post(f"/api/jobs/{job_id}/retry").status_code == 409


def test_restart_with_jobs_queued_and_running_loses_nothing(make_settings) -> None:
    settings = fast_settings(make_settings, queue="local", auto_analyses="llc")
    run_id, ckpts = seed_run(settings, [1, 10])
    # First server: plans the jobs but its workers never run (as if it died right away).
    first = create_app(fast_settings(make_settings, queue="none"))
    ids = first.state.queue.checkpoints_added(run_id, ckpts)
    db = Database(settings)
    assert lifecycle.claim(db, ids[0], "dead-worker") is not None  # died mid-job
    with db.session() as s:
        s.execute(
            sa.update(Job).where(Job.id == ids[0]).values(heartbeat_at=utcnow().replace(year=2000))
        )
    first.state.db.dispose()
    # The restarted server requeues the orphan and runs everything.
    app = create_app(settings)
    with TestClient(app):
        jobs = wait_for(db, lambda js: all_final([j for j in js if j.id in ids]))
    assert [j.state for j in jobs if j.id in ids] == ["done", "done"]
    assert [j.attempts for j in jobs if j.id in ids] == [2, 1]
    assert all(len(v) == 1 for v in results_by_job(db).values())
    db.dispose()


def test_checkpoint_uploaded_through_the_api_is_analysed_in_the_background(make_settings) -> None:
    from phaseboard.analysis.checkpoints import save_safetensors_bytes
    from tests.server.jobs.conftest import TINY_LLC, TINY_TASK, state_dict

    settings = fast_settings(make_settings, queue="local", auto_analyses="llc")
    app = create_app(settings)
    with TestClient(app) as client:
        body = {"name": "uploaded", "task": "dln", "task_config": TINY_TASK}
        run = client.post("/api/runs", json={**body, "analysis_config": {"llc": TINY_LLC}})
        assert run.status_code == 201, run.text
        run_id = run.json()["id"]
        files = {"file": ("step_5.safetensors", save_safetensors_bytes(state_dict(0)))}
        up = client.post(f"/api/runs/{run_id}/checkpoints", data={"step": "5"}, files=files)
        assert up.status_code == 201, up.text
        wait_for(app.state.db, lambda js: any(j.kind == "llc" and j.state == "done" for j in js))
        (point,) = client.get(f"/api/runs/{run_id}/llc").json()["points"]
        assert point["step"] == 5 and point["mean"] is not None


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_stopping_the_server_hands_a_running_job_back_to_the_queue(make_settings, pool) -> None:
    settings = fast_settings(make_settings, local_pool=pool, queue="local")
    run_id, _ = seed_run(settings, [1])
    app = create_app(settings)
    with TestClient(app):
        (job_id,) = app.state.queue.plan_and_enqueue(run_id, ["sleep"], config={"seconds": 60})
        wait_for(app.state.db, lambda js: js[0].state == "running" and js[0].progress > 0)
    with app.state.db.session() as s:  # the lifespan disposed the engine; it reconnects
        job = s.get(Job, job_id)
        assert job.state == "queued" and job.progress_msg.startswith("interrupted")
    app.state.db.dispose()


def test_restricted_llc_job_writes_one_result_per_weight_group_and_data_subset(
    make_settings,
) -> None:
    settings = fast_settings(make_settings, queue="local")
    run_id, _ = seed_run(settings, [4])
    app = create_app(settings)
    with TestClient(app) as client:
        resp = client.post(f"/api/runs/{run_id}/analyses", json={"kinds": ["llc_restricted"]})
        (job_id,) = resp.json()["job_ids"]
        (job,) = wait_for(app.state.db, lambda js: all_final(js))
        assert job.state == "done", job.error
        (point,) = client.get(f"/api/runs/{run_id}/llc").json()["points"]
    assert sorted(point["restrictions"]) == [
        "data:first_half",
        "data:second_half",
        "weights:layers.0",
        "weights:layers.1",
    ]
    assert all(len(v["per_chain"]) == 2 for v in point["restrictions"].values())
    assert len(results_by_job(app.state.db)[job_id]) == 4


def _pid(job: Job) -> int:
    return int((job.worker_id or "").split(":")[1])


def test_a_worker_process_that_dies_is_replaced_and_its_job_runs_again_at_once(
    make_settings,
) -> None:
    """A worker killed mid-job (the OOM killer, a crash in native code) costs the job one
    attempt, not the ``stale_after_s`` wait, and the pool keeps its size."""
    settings = fast_settings(make_settings, local_pool="processes", queue="local")
    settings.stale_after_s = 600.0  # the sweep must not be what brings the job back
    run_id, _ = seed_run(settings, [1])
    app = create_app(settings)
    with TestClient(app):
        (job_id,) = app.state.queue.plan_and_enqueue(run_id, ["sleep"], config={"seconds": 60})
        (job,) = wait_for(app.state.db, lambda js: js[0].state == "running" and js[0].progress > 0)
        os.kill(_pid(job), signal.SIGKILL)
        (again,) = wait_for(
            app.state.db,
            lambda js: js[0].state == "running" and js[0].attempts == 2 and js[0].progress > 0,
            timeout=30,
        )
        assert _pid(again) != _pid(job)
        assert _pid(again) in {p.pid for p in psutil.Process().children()}


def test_a_database_only_this_process_can_open_runs_its_workers_as_threads(
    make_settings, tmp_path
) -> None:
    for url, processes in [("sqlite:///:memory:", False), (f"sqlite:///{tmp_path}/x.db", True)]:
        settings = make_settings(database_url=url, queue="local", local_pool="processes")
        queue = LocalQueue(settings, Database(settings), BlobStore(tmp_path / "blobs"))
        assert queue.processes is processes
