"""Scheduling by cost: cheap jobs first and in their own lane; heavy kinds batch."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.celery_app import FAST_QUEUE, job_queue, worker_queues
from phaseboard.server.jobs.planning import plan_jobs
from tests.conftest import BACKENDS
from tests.server.jobs.conftest import all_final, fast_settings, results_by_job, seed_run, wait_for


@pytest.mark.parametrize("backend", BACKENDS)
def test_phases_and_metrics_are_claimed_before_older_llc_jobs(make_settings) -> None:
    settings = fast_settings(make_settings)
    run_id, ckpts = seed_run(settings, [1, 10, 100])
    db = Database(settings)
    try:
        with db.session() as s:
            heavy = plan_jobs(s, run_id, ["llc", "llc_restricted"], ckpts)
            fast = plan_jobs(s, run_id, ["metrics", "phases"], ckpts)
        order = lifecycle.queued_ids(db, "cpu")
        assert order[: len(fast)] == sorted(fast)  # every cheap job first, oldest first
        assert order[len(fast) :] == sorted(heavy)
        assert lifecycle.queued_ids(db, "cpu", lane="fast") == sorted(fast)
        assert lifecycle.queued_ids(db, "cpu", lane="heavy") == sorted(heavy)
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_restricted_llc_jobs_of_one_run_run_as_one_batch_with_per_checkpoint_results(
    make_settings,
) -> None:
    settings = fast_settings(make_settings, queue="local", local_fast_workers=0)
    run_id, ckpts = seed_run(settings, [1, 10, 100])
    app = create_app(settings, start_workers=False)
    queue, db = app.state.queue, app.state.db
    ids = queue.plan_and_enqueue(run_id, ["llc_restricted"], ckpts)
    with TestClient(app) as client:
        queue.start()
        jobs = wait_for(db, all_final)
        restricted = [j for j in jobs if j.id in ids]
        assert all(j.state == "done" for j in restricted), [j.error for j in restricted]
        assert len({j.worker_id for j in restricted}) == 1
        results = results_by_job(db)
        for job in restricted:
            rows = results[job.id]
            assert sorted(r.restriction for r in rows) == [
                "data:first_half",
                "data:second_half",
                "weights:layers.0",
                "weights:layers.1",
            ]
            assert all(r.values["batch"] == 3 for r in rows)
        points = client.get(f"/api/runs/{run_id}/llc").json()["points"]
        assert [p["step"] for p in points] == [1, 10, 100]
    db.dispose()


def test_cheap_kinds_go_to_the_fast_queue_and_a_fast_worker_takes_only_it() -> None:
    assert job_queue("any", "phases") == FAST_QUEUE
    assert job_queue("any", "metrics") == FAST_QUEUE
    assert job_queue("any", "llc") == "pb.any"
    assert job_queue("cuda", "metrics") == "pb.cuda"  # pinned to a device: its queue
    assert worker_queues("cuda:0") == [FAST_QUEUE, "pb.cuda", "pb.any"]
    assert worker_queues("cpu", "fast") == [FAST_QUEUE]
    assert worker_queues("cpu", "heavy") == ["pb.cpu", "pb.any"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fast_lens_measured_slow_moves_to_the_heavy_lane(make_settings) -> None:
    """Metrics is declared fast; once its finished jobs take a median over HEAVY_ABOVE_S on
    this database it is claimed like a heavy lens, goes to Celery's heavy queues, and no
    longer fills the fast lane. A heavy lens stays heavy however quick its jobs."""
    from datetime import timedelta

    from phaseboard.server.jobs import lanes
    from phaseboard.server.models import Job, utcnow

    settings = fast_settings(make_settings)
    run_id, ckpts = seed_run(settings, [1, 10, 100, 1000])
    db = Database(settings)
    try:
        with db.session() as s:
            done = plan_jobs(s, run_id, ["metrics", "llc"], ckpts[:3])
        now = utcnow()
        with db.session() as s:
            for job in s.query(Job).filter(Job.id.in_(done)):
                took = 600.0 if job.kind == "metrics" else 1.0
                job.state, job.started_at = "done", now - timedelta(seconds=took)
                job.finished_at = now
        assert lanes.is_fast("metrics", db)  # not measured yet: as declared
        lanes.refresh(db, force=True)
        assert lanes.measured_seconds(db)["metrics"] == pytest.approx(600.0)
        assert not lanes.is_fast("metrics", db) and not lanes.is_fast("llc", db)
        assert lanes.is_fast("phases", db) and lanes.is_fast("metrics")  # no db: declared
        with db.session() as s:
            heavy = plan_jobs(s, run_id, ["llc"], ckpts[3:])
            slow = plan_jobs(s, run_id, ["metrics"], ckpts[3:])
            fast = plan_jobs(s, run_id, ["phases"])
        assert lifecycle.queued_ids(db, "cpu", lane="fast") == fast
        assert lifecycle.queued_ids(db, "cpu") == fast + sorted(heavy + slow)
        assert job_queue("any", "metrics", db) != FAST_QUEUE
        assert job_queue("any", "phases", db) == FAST_QUEUE
    finally:
        db.dispose()
