"""Run-level lenses as jobs: essential dynamics reruns as checkpoints arrive, and its
turning points reach the phases job as boundary candidates."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.jobs.planning import plan_jobs
from phaseboard.server.models import Checkpoint, Job
from tests.server.jobs.conftest import add_checkpoints, all_final, fast_settings, seed_run, wait_for

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


def _seed_trained_run(settings, task_name: str, config: dict) -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    """A run of ``task_name`` whose checkpoints come from its own short training."""
    from phaseboard.analysis.tasks import get_task
    from phaseboard.server.models import Run
    from phaseboard.server.storage import BlobStore

    task = get_task(task_name, config)
    db = Database(settings)
    store = BlobStore(settings.storage_dir)
    try:
        with db.session() as s:
            run = Run(
                name=f"{task_name}-trained",
                task=task_name,
                task_config=config,
                analysis_config={"metrics": {"hutchinson_samples": 0}},
            )
            s.add(run)
            s.flush()
            weights = [(p.step, p.state_dict) for p in task.train() if p.is_checkpoint]
            return run.id, add_checkpoints(s, store, run.id, weights)
    finally:
        db.dispose()


def test_metrics_job_stores_the_tasks_progress_measures(make_settings) -> None:
    settings = fast_settings(make_settings, queue="local", auto_analyses="metrics")
    config = {"steps": 200, "num_checkpoints": 6, "eval_every": 100, "num_samples": 256}
    run_id, ckpts = _seed_trained_run(settings, "tms", config)
    app = create_app(settings, start_workers=False)
    app.state.queue.checkpoints_added(run_id, ckpts)
    with TestClient(app) as client:
        app.state.queue.start()
        jobs = wait_for(
            app.state.db, lambda js: all_final(js) and any(j.kind == "phases" for j in js)
        )
        assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]
        got = client.get(f"/api/runs/{run_id}/results", params={"kind": "metrics"}).json()
    values = [r["values"] for r in got["results"]]
    assert len(values) == len(ckpts)
    assert all({"progress/features_represented", "progress/kgon_k"} <= set(v) for v in values)
    assert all(0 <= v["progress/features_represented"] <= 6 for v in values)


def test_phases_take_jumps_of_progress_measures_as_boundaries(make_settings) -> None:
    import math

    from phaseboard.server.models import PhaseBoundary, Result

    settings = fast_settings(make_settings, queue="local")
    steps = [int(round(10 ** (1 + 3 * i / 39))) for i in range(40)]
    run_id, ckpts = seed_run(settings, sorted(set(steps)))
    db = Database(settings)
    try:
        with db.session() as s:
            for ck in s.scalars(sa.select(Checkpoint).where(Checkpoint.run_id == run_id)):
                score = 0.05 if ck.step < 1000 else 0.9  # an induction head forms at 1e3
                s.add(
                    Result(
                        run_id=run_id,
                        checkpoint_id=ck.id,
                        step=ck.step,
                        kind="metrics",
                        values={"progress/prefix_matching": score, "progress/top_frequency": 3.0},
                    )
                )
    finally:
        db.dispose()
    app = create_app(settings, start_workers=False)
    app.state.queue.request_phases(run_id)
    with TestClient(app):
        app.state.queue.start()
        jobs = wait_for(app.state.db, all_final)
        assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]
    with app.state.db.session() as s:
        found = s.scalars(sa.select(PhaseBoundary).where(PhaseBoundary.run_id == run_id)).all()
    progress = [b for b in found if "progress:prefix_matching" in b.source.split("+")]
    assert progress and min(abs(math.log10(b.step) - 3) for b in progress) <= 0.1
    assert not any("top_frequency" in b.source for b in found)


def test_learning_order_job_keeps_losses_as_one_float16_blob_and_pages_read_it(
    make_settings,
) -> None:
    import io

    import numpy as np

    from phaseboard.server.blob_gc import collect_garbage

    settings = fast_settings(make_settings, queue="local", auto_analyses="learning_order")
    run_id, ckpts = seed_run(settings, [1, 10, 100, 1000])
    other_id, other_ckpts = seed_run(settings, [1, 10, 100, 1000], name="tiny-2")
    app = create_app(settings, start_workers=False)
    queue, db = app.state.queue, app.state.db
    queue.checkpoints_added(run_id, ckpts)
    queue.checkpoints_added(other_id, other_ckpts)
    with TestClient(app) as client:
        queue.start()
        jobs = wait_for(
            db, lambda js: all_final(js) and sum(j.kind == "learning_order" for j in js) == 2
        )
        assert all(j.state == "done" for j in jobs), [(j.kind, j.error) for j in jobs]
        lenses = client.get(f"/api/runs/{run_id}/lenses").json()
        lo = lenses["learning_order"]
        assert lo["steps"] == [1, 10, 100, 1000] and lo["split"] == "train"
        assert lo["n_examples"] == 64 == len(lo["learned_at"]) == len(lo["order"])  # dln: 64
        with app.state.store.open_path(lo["losses_blob"]).open("rb") as fh:
            losses = np.load(io.BytesIO(fh.read()))
        assert losses.dtype == np.float16 and losses.shape == (4, 64)

        heat = client.get(f"/api/runs/{run_id}/learning_order/heatmap", params={"max_examples": 10})
        assert heat.status_code == 200
        h = heat.json()
        assert len(h["z"]) == 10 and all(len(row) == 4 for row in h["z"])
        learned = [np.inf if v is None else v for v in h["learned_at"]]
        assert learned == sorted(learned)  # rows follow the learned-at order

        agree = client.get("/api/learning_order/agreement", params={"runs": f"{run_id},{other_id}"})
        assert agree.status_code == 200
        (pair,) = agree.json()["pairs"]
        assert pair["of"] == 64 and 0 <= pair["n"] <= 64
        assert pair["rho"] is None or -1 <= pair["rho"] <= 1
        for bad in ("1", "1,²", "1,99999999999999999999", ""):
            got = client.get("/api/learning_order/agreement", params={"runs": bad})
            assert got.status_code == 422, bad
        missing = client.get("/api/runs/999/learning_order/heatmap")
        assert missing.status_code == 404
    # the blob is no checkpoint's, but a result points to it: gc keeps it
    report = collect_garbage(db, app.state.store, min_age_s=0.0)
    assert lo["losses_blob"] not in report.removed
    assert app.state.store.open_path(lo["losses_blob"]).is_file()
