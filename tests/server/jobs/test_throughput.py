"""Measured chain-steps/s on finished jobs and the jobs panel's time-to-completion."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.jobs.planning import plan_jobs
from phaseboard.server.jobs.throughput import chain_steps, eta_by_kind, format_eta
from phaseboard.server.models import Job, utcnow
from tests.conftest import BACKENDS
from tests.server.jobs.conftest import TINY_LLC, all_final, fast_settings, seed_run, wait_for


def test_chain_steps_counts_chains_times_sgld_steps_over_results() -> None:
    cfg = {"num_burnin_steps": 5, "num_draws": 10, "num_steps_bw_draws": 2}
    rows = [
        {"values": {"per_chain": [1.0, 2.0], "config": cfg}},
        {"values": {"per_chain": [1.0, 2.0, 3.0], "config": cfg}},
        {"values": {"train_loss": 0.1}},  # metrics: no chains
    ]
    assert chain_steps(rows) == (2 + 3) * 25
    assert chain_steps([{"values": {"train_loss": 0.1}}]) is None


def test_eta_text_is_readable() -> None:
    assert format_eta(None) == "estimating"
    assert format_eta(42.4) == "~42 s"
    assert format_eta(600) == "~10 min"
    assert format_eta(3 * 3600) == "~3.0 h"


@pytest.mark.parametrize("backend", BACKENDS)
def test_eta_is_remaining_chain_steps_over_the_measured_rate(make_settings) -> None:
    settings = fast_settings(make_settings)
    run_id, ckpts = seed_run(settings, [1, 2, 3, 4])
    db = Database(settings)
    try:
        with db.session() as s:
            ids = plan_jobs(s, run_id, ["llc"], ckpts)
        with db.session() as s:
            assert eta_by_kind(s, run_id)["llc"] == {"jobs": 4, "seconds": None, "rate": None}
            # Two finished at 100 chain-steps/s, 300 chain-steps each; one half done.
            for job_id in ids[:2]:
                s.execute(
                    sa.update(Job)
                    .where(Job.id == job_id)
                    .values(
                        state="done",
                        finished_at=utcnow(),
                        chain_steps=300.0,
                        chain_steps_per_s=100.0,
                    )
                )
            s.execute(sa.update(Job).where(Job.id == ids[2]).values(state="running", progress=0.5))
        with db.session() as s:
            eta = eta_by_kind(s, run_id)["llc"]
        assert eta["jobs"] == 2 and eta["rate"] == 100.0
        assert eta["seconds"] == pytest.approx((0.5 + 1.0) * 300 / 100)
        with TestClient(create_app(settings)) as client:
            panel = client.get(f"/runs/{run_id}/jobs").text
        assert "2 left · ~4 s" in panel and "100 chain-steps/s" in panel
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_finished_llc_jobs_store_their_throughput_and_the_panel_shows_an_estimate(
    make_settings,
) -> None:
    settings = fast_settings(make_settings, queue="local", llc_batch_checkpoints=2)
    run_id, ckpts = seed_run(settings, [1, 10, 100, 1000])
    app = create_app(settings, start_workers=False)
    queue, db = app.state.queue, app.state.db
    queue.plan_and_enqueue(run_id, ["llc"], ckpts)
    with TestClient(app) as client:
        queue.start()
        jobs = wait_for(db, all_final)
        assert client.get(f"/runs/{run_id}/jobs").status_code == 200
    llc = [j for j in jobs if j.kind == "llc"]
    per_job = TINY_LLC["num_chains"] * TINY_LLC["num_draws"]
    assert all(j.chain_steps == per_job for j in llc)
    assert all(j.chain_steps_per_s and j.chain_steps_per_s > 0 for j in llc)
    db.dispose()
