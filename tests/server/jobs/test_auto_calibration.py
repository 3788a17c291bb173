"""Calibration first, on SQLite and PostgreSQL with the real local worker pool: a run with no
LLC settings of its own waits for an automatic calibration, which starts when the run settles
and whose recommendation becomes the run's settings before any LLC job runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.jobs.auto_calibration import apply_calibration, settle
from phaseboard.server.jobs.planning import CALIBRATION_RECORD, CALIBRATION_WAIT
from phaseboard.server.models import Job, Run
from tests.server.jobs.conftest import all_final, fast_settings, seed_run, wait_for

STEPS = [1, 10, 100, 1000, 2000]
# No lr and no localization: the run has no LLC settings of its own.
UNSET_LLC: dict[str, Any] = {"num_chains": 2, "num_draws": 15, "batch_size": 32}


def _jobs(db: Any, run_id: int) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(sa.select(Job).where(Job.run_id == run_id).order_by(Job.id)))


def _analysis_config(db: Any, run_id: int) -> dict[str, Any]:
    with db.session() as s:
        run = s.get(Run, run_id)
        assert run is not None
        return dict(run.analysis_config or {})


def _settings(make_settings: Any) -> Any:
    return fast_settings(
        make_settings, queue="local", auto_analyses="metrics,llc,llc_restricted",
        auto_calibrate=True, local_fast_workers=1,
    )  # fmt: skip


def test_llc_jobs_wait_for_the_calibration_which_starts_when_the_import_ends_and_sets_the_run(
    make_settings,
) -> None:
    settings = _settings(make_settings)
    run_id, ckpts = seed_run(settings, STEPS, llc=UNSET_LLC)
    app = create_app(settings, start_workers=False)
    db = app.state.db
    with TestClient(app) as client:
        queue = app.state.queue
        queue.checkpoints_added(run_id, ckpts)  # what each upload does
        jobs = _jobs(db, run_id)
        llc = [j for j in jobs if j.kind in ("llc", "llc_restricted")]
        assert len(llc) == 2 * len(STEPS)
        assert all(j.state == "waiting" and j.progress_msg == CALIBRATION_WAIT for j in llc)
        assert not [j for j in jobs if j.kind == "calibrate"]  # not before the run settles
        panel = client.get(f"/runs/{run_id}/jobs").text
        assert CALIBRATION_WAIT in panel  # the run page says what the LLC waits for

        queue.start()
        wait_for(db, lambda js: all(j.state == "done" for j in js if j.kind == "metrics"))
        # The import is complete: the calibration starts now.
        finished = client.post(f"/api/runs/{run_id}/finish", json={"status": "imported"})
        assert finished.status_code == 200, finished.text
        assert finished.json()["status"] == "imported"
        wait_for(db, all_final, timeout=300)

        jobs = _jobs(db, run_id)
        (cal,) = [j for j in jobs if j.kind == "calibrate"]
        assert cal.state == "done", cal.error
        assert cal.config["checkpoint_ids"] is None  # picked when it ran
        cfg = _analysis_config(db, run_id)
        record = cfg[CALIBRATION_RECORD]
        assert record["job_id"] == cal.id and record["reason"]
        assert len(record["checkpoints"]) == 3 and record["checkpoints"][-1] == 2000
        rec = record["recommended"]
        if rec is not None:  # the recommendation is the run's settings now
            assert (cfg["llc"]["lr"], cfg["llc"]["localization"]) == (
                rec["lr"],
                rec["localization"],
            )
        llc = [j for j in jobs if j.kind in ("llc", "llc_restricted")]
        assert len(llc) == 2 * len(STEPS)  # the waiting jobs were replaced, not doubled
        assert all(j.state == "done" for j in llc), [(j.kind, j.state, j.error) for j in llc]
        assert all(j.id > cal.id for j in llc)  # planned after the calibration
        if rec is not None:
            assert {(j.config["lr"], j.config["localization"]) for j in llc} == {
                (rec["lr"], rec["localization"])
            }
        plot = client.get(f"/api/runs/{run_id}/plotdata").json()
        assert len(plot["llc"]["step"]) == len(STEPS)

        # A later checkpoint is analysed with the calibrated settings at once.
        assert not _waiting(db, run_id)


def _waiting(db: Any, run_id: int) -> list[Job]:
    return [j for j in _jobs(db, run_id) if j.state == "waiting"]


def test_a_run_with_its_own_llc_settings_is_not_calibrated(make_settings) -> None:
    settings = _settings(make_settings)
    own = {**UNSET_LLC, "lr": 1e-3}
    run_id, ckpts = seed_run(settings, STEPS[:2], llc=own)
    app = create_app(settings, start_workers=False)
    with TestClient(app):
        app.state.queue.checkpoints_added(run_id, ckpts)
        jobs = _jobs(app.state.db, run_id)
        assert {j.state for j in jobs if j.kind == "llc"} == {"queued"}
        assert app.state.queue.run_settled(run_id) == []
        assert not [j for j in _jobs(app.state.db, run_id) if j.kind == "calibrate"]


def test_auto_calibrate_off_queues_the_llc_with_the_defaults(make_settings) -> None:
    settings = fast_settings(make_settings, queue="none", auto_calibrate=False)
    run_id, ckpts = seed_run(settings, STEPS[:2], llc=UNSET_LLC)
    app = create_app(settings, start_workers=False)
    with TestClient(app):
        app.state.queue.checkpoints_added(run_id, ckpts)
        assert {j.state for j in _jobs(app.state.db, run_id) if j.kind == "llc"} == {"queued"}


def test_a_run_that_never_finishes_is_calibrated_once_its_checkpoints_settle(
    make_settings,
) -> None:
    settings = fast_settings(
        make_settings, queue="none", auto_calibrate=True, calibration_settle_s=60.0
    )
    run_id, ckpts = seed_run(settings, STEPS[:3], llc=UNSET_LLC)
    app = create_app(settings, start_workers=False)
    db = app.state.db
    with TestClient(app):
        app.state.queue.checkpoints_added(run_id, ckpts)
        assert settle(db, settings) == []  # the newest checkpoint is seconds old
        later = datetime.now(UTC) + timedelta(seconds=61)
        (cal_id,) = settle(db, settings, now=later)
        assert settle(db, settings, now=later) == []  # one calibration at a time
        with db.session() as s:
            cal = s.get(Job, cal_id)
            assert cal is not None and cal.kind == "calibrate" and cal.state == "queued"
        # A live client (heartbeats) holds it off: the run is still training.
        with db.session() as s:
            s.execute(sa.delete(Job).where(Job.id == cal_id))
            run = s.get(Run, run_id)
            assert run is not None
            run.status, run.heartbeat_at = "running", later
        assert settle(db, settings, now=later) == []


def test_a_failed_calibration_releases_the_llc_jobs_with_the_defaults_and_says_why(
    make_settings,
) -> None:
    settings = fast_settings(make_settings, queue="none", auto_calibrate=True)
    run_id, ckpts = seed_run(settings, STEPS[:2], llc=UNSET_LLC)
    app = create_app(settings, start_workers=False)
    db = app.state.db
    with TestClient(app):
        queue = app.state.queue
        queue.checkpoints_added(run_id, ckpts)
        (cal_id,) = queue.run_settled(run_id)
        with db.session() as s:
            cal = s.get(Job, cal_id)
            assert cal is not None
            cal.state, cal.error = "failed", "calibrate: out of memory"
        ids = apply_calibration(db, settings, run_id)
        record = _analysis_config(db, run_id)[CALIBRATION_RECORD]
        assert record["recommended"] is None and "out of memory" in record["reason"]
        assert "default settings" in record["reason"]
        jobs = [j for j in _jobs(db, run_id) if j.kind == "llc"]
        assert sorted(j.id for j in jobs) == sorted(i for i in ids if i in {j.id for j in jobs})
        assert {j.state for j in jobs} == {"queued"} and len(jobs) == 2
        assert not _waiting(db, run_id)


def test_llc_settings_set_by_hand_while_waiting_release_the_waiting_jobs(make_settings) -> None:
    settings = fast_settings(make_settings, queue="none", auto_calibrate=True)
    run_id, ckpts = seed_run(settings, STEPS[:2], llc=UNSET_LLC)
    app = create_app(settings, start_workers=False)
    db = app.state.db
    with TestClient(app) as client:
        app.state.queue.checkpoints_added(run_id, ckpts)
        assert len(_waiting(db, run_id)) == 2
        used = client.post(
            f"/api/runs/{run_id}/llc-settings", json={"lr": 3e-4, "localization": 10.0}
        )
        assert used.status_code == 202, used.text
        settle(db, settings)  # the sweep: the run no longer needs a calibration
        assert not _waiting(db, run_id)
        llc = [j for j in _jobs(db, run_id) if j.kind == "llc"]
        assert {j.state for j in llc} == {"queued"} and len(llc) == 2
        assert {j.config["lr"] for j in llc} == {3e-4}


def _entry(lr: float, gamma: float, verdicts: list[str], shift: float | None) -> dict[str, Any]:
    per = [{"index": k, "verdict": v} for k, v in enumerate(verdicts)]
    return {"lr": lr, "localization": gamma, "n_beta": 80.0, "lr_shift": shift,
            "per_checkpoint": per}  # fmt: skip


def test_with_no_setting_ok_everywhere_the_fallback_keeps_every_chain_in_the_basin() -> None:
    from phaseboard.server.jobs.auto_calibration import fallback_setting

    entries = [
        _entry(1e-3, 1.0, ["ok", "left the basin", "ok"], 0.01),  # weakest pull, but out
        _entry(1e-4, 10.0, ["not converged", "ok", "ok"], 0.30),
        _entry(3e-4, 10.0, ["step-size bias", "ok", "ok"], 0.12),
        _entry(1e-4, 100.0, ["ok", "ok", "ok"], 0.01),  # sound, but a stronger pull
    ]
    assert fallback_setting({"entries": entries}) == {
        "lr": 3e-4, "localization": 10.0, "n_beta": 80.0,
    }  # fmt: skip
    out = [_entry(1e-3, 1.0, ["diverged chains"], None)]
    assert fallback_setting({"entries": out}) is None


def _calibrate_wide_run(make_settings: Any, local_workers: int) -> dict[str, Any]:
    """A calibration of a 2,000-parameter dln whose settings do not fit one call."""
    from phaseboard.server.db import Database
    from phaseboard.server.storage import BlobStore
    from tests.server.jobs.conftest import TINY_TASK, add_checkpoints, state_dict

    settings = fast_settings(
        make_settings, queue="local", llc_memory_mb=1, auto_calibrate=True,
        local_workers=local_workers,
    )  # fmt: skip
    widths = [40, 40, 10]  # 2,000 parameters: a 1 MB budget holds fewer rows than one setting's
    db = Database(settings)
    with db.session() as s:
        run = Run(name=f"wide-{local_workers}", task="dln",
                  task_config={**TINY_TASK, "widths": widths},
                  analysis_config={"llc": UNSET_LLC})  # fmt: skip
        s.add(run)
        s.flush()
        run_id = run.id
        store = BlobStore(settings.storage_dir)
        add_checkpoints(s, store, run_id, [(st, state_dict(st, widths)) for st in (10, 100, 1000)])
    db.dispose()
    app = create_app(settings, start_workers=False)
    db = app.state.db
    with TestClient(app) as client:
        app.state.queue.start()
        grid = {"lrs": [1e-4, 1e-3], "localizations": [1.0, 10.0]}
        queued = client.post(f"/api/runs/{run_id}/analyses",
                             json={"lenses": ["calibrate"], "calibrate": grid})  # fmt: skip
        assert queued.status_code == 202, queued.text
        wait_for(db, all_final, timeout=300)
        cal = client.get(f"/api/runs/{run_id}/calibration").json()["calibration"]
        assert cal is not None, client.get("/api/jobs", params={"run_id": run_id}).json()
        assert {(e["lr"], e["localization"]) for e in cal["entries"]} == {
            (lr, g) for lr in grid["lrs"] for g in grid["localizations"]
        }
    return cal


def test_a_calibration_over_the_memory_budget_runs_one_checkpoint_a_call_and_joins_them(
    make_settings,
) -> None:
    cal = _calibrate_wide_run(make_settings, local_workers=1)
    assert cal["calls"] == 4 * 3  # one setting at one checkpoint a call
    assert cal["parallel_calls"] == 1
    for e in cal["entries"]:
        assert [c["index"] for c in e["per_checkpoint"]] == [0, 1, 2]
        assert e["ok"] == all(c["verdict"] == "ok" for c in e["per_checkpoint"])
    assert [c["step"] for c in cal["checkpoints"]] == [10, 100, 1000]

    # The same calibration with a pool of three: its calls run three at a time, and every
    # number is the one the calls gave one after another (each call draws its own batches).
    side_by_side = _calibrate_wide_run(make_settings, local_workers=3)
    assert side_by_side["calls"] == 12 and side_by_side["parallel_calls"] == 3
    assert side_by_side["entries"] == cal["entries"]
    assert side_by_side["recommended"] == cal["recommended"]
