"""Run-level lenses as jobs: essential dynamics reruns as checkpoints arrive, and its
turning points reach the phases job as boundary candidates."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from server.app import create_app
from server.db import Database
from server.jobs.planning import plan_jobs
from server.models import Checkpoint, Job
from tests.server.jobs.conftest import all_final, fast_settings, seed_run, wait_for

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_new_checkpoints_queue_one_essential_dynamics_job_that_reads_them_all(
    make_settings,
) -> None:
    settings = fast_settings(make_settings, queue="local", auto_analyses="essential_dynamics")
    run_id, ckpts = seed_run(settings, [1, 10, 100, 1000, 10000])
    app = create_app(settings, start_workers=False)
    queue, db = app.state.queue, app.state.db
    first = queue.checkpoints_added(run_id, ckpts[:2])
    again = queue.checkpoints_added(run_id, ckpts[2:])  # one is waiting: no second job
    assert len(first) == 1 and again == first
    with TestClient(app) as client:
        queue.start()
        jobs = wait_for(
            db,
            lambda js: all_final(js) and {j.kind for j in js} >= {"essential_dynamics", "phases"},
        )
        assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]
        got = client.get(f"/api/runs/{run_id}/results", params={"kind": "essential_dynamics"})
        (result,) = got.json()["results"]
    values = result["values"]
    assert values["steps"] == [1, 10, 100, 1000, 10000]
    assert len(values["components"]) == 5 and all(len(c) == 3 for c in values["components"])
    ratios = values["explained_variance"]
    assert 0 < sum(ratios) <= 1 + 1e-9 and ratios == sorted(ratios, reverse=True)
    assert values["probe_examples"] == 128 and values["output_dim"] == 32 * 2  # dln: 32 x 2


def test_essential_dynamics_is_planned_anew_only_when_checkpoints_change(make_settings) -> None:
    settings = fast_settings(make_settings)
    run_id, ckpts = seed_run(settings, [1, 10, 100])
    db = Database(settings)
    try:
        with db.session() as s:
            (a,) = plan_jobs(s, run_id, ["essential_dynamics"])
            (b,) = plan_jobs(s, run_id, ["essential_dynamics"])
            assert a == b
            old = s.get(Checkpoint, ckpts[0])
            s.add(
                Checkpoint(
                    run_id=run_id, step=1000, sha256=old.sha256, size=old.size, format="safetensors"
                )
            )
            s.flush()
            (c,) = plan_jobs(s, run_id, ["essential_dynamics"])
            assert c != a
            assert s.scalar(sa.select(sa.func.count(Job.id))) == 2
    finally:
        db.dispose()
