"""Calibration and LLC settings series end to end, on SQLite and PostgreSQL, with the
embedded local worker pool running the real jobs on a tiny dln run."""

from __future__ import annotations

from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from tests.server.jobs.conftest import all_final, fast_settings, seed_run, wait_for

GRID = {"lrs": [1e-4, 1e-3], "localizations": [10.0, 100.0]}


def test_calibrate_job_stores_every_setting_and_use_for_run_starts_a_new_series(
    make_settings,
) -> None:
    settings = fast_settings(make_settings, queue="local", auto_analyses="llc")
    run_id, ckpts = seed_run(settings, [1, 10, 100, 1000, 1500, 2000])
    app = create_app(settings, start_workers=False)
    db = app.state.db
    with TestClient(app) as client:
        app.state.queue.start()
        first = client.post(f"/api/runs/{run_id}/analyses", json={"kinds": ["llc"]})
        assert first.status_code == 202, first.text
        body = {"kinds": ["calibrate"], "calibrate": GRID}
        queued = client.post(f"/api/runs/{run_id}/analyses", json=body)
        assert queued.status_code == 202, queued.text
        (cal_job,) = queued.json()["job_ids"]
        wait_for(db, all_final, timeout=120)
        job = client.get(f"/api/jobs/{cal_job}").json()
        assert job["state"] == "done", job["error"]
        # Default checkpoints: picked when the job runs, spread over the trajectory in
        # log-step (no training losses here, so no sharpest part): first, middle, last.
        assert job["config"]["checkpoint_ids"] is None

        cal = client.get(f"/api/runs/{run_id}/calibration").json()["calibration"]
        assert [c["step"] for c in cal["checkpoints"]] == [1, 100, 2000]
        entries = cal["entries"]
        assert {(e["lr"], e["localization"]) for e in entries} == {
            (lr, g) for lr in GRID["lrs"] for g in GRID["localizations"]
        }
        for e in entries:
            assert len(e["per_checkpoint"]) == 3
            assert e["verdict"] in ("ok", "diverged chains", "too few draws", "impossible",
                                    "left the basin", "negative", "not converged")  # fmt: skip
            assert e["ok"] == all(c["verdict"] == "ok" for c in e["per_checkpoint"])
            assert len(e["per_checkpoint"][-1]["mean_trace"]) == 15  # TINY_LLC num_draws
        rec = cal["recommended"]
        assert rec is None or any(e["ok"] and e["lr"] == rec["lr"] for e in entries)
        assert cal["reason"]

        # "Use for this run": new settings, new LLC jobs, old results kept as another series.
        old = client.get(f"/api/runs/{run_id}/plotdata").json()
        assert len(old["llc"]["step"]) == 6 and len(old["llc_settings"]) == 1
        used = client.post(
            f"/api/runs/{run_id}/llc-settings", json={"lr": 1e-4, "localization": 100.0}
        )
        assert used.status_code == 202, used.text
        assert used.json()["llc"]["lr"] == 1e-4 and len(used.json()["job_ids"]) == 6
        wait_for(db, all_final, timeout=120)
        new = client.get(f"/api/runs/{run_id}/plotdata").json()
        assert new["llc_settings_shown"] == used.json()["settings_hash"]
        assert [s["count"] for s in new["llc_settings"]] == [6, 6]
        assert new["llc_settings"][0]["current"] and "lr 0.0001" in new["llc_settings"][0]["label"]
        assert len(new["llc"]["step"]) == 6 and all(v for v in new["llc"]["verdict"])
        assert all(nb is not None for nb in new["llc"]["n_beta"])
        back = client.get(
            f"/api/runs/{run_id}/plotdata",
            params={"llc_settings": old["llc_settings_shown"][:12]},
        ).json()
        assert back["llc_settings_shown"] == old["llc_settings_shown"]
        assert back["llc"]["id"] == old["llc"]["id"]

        # One result's payload: traces, verdict, diagnostics and the settings used.
        detail = client.get(f"/api/results/{new['llc']['id'][0]}").json()["values"]
        assert len(detail["loss_trace"]) == 2 and detail["verdict"]
        assert detail["settings"]["lr"] == 1e-4 and detail["n_beta"] > 0
        assert len(detail["diagnostics"]["distance"]) == 2
        assert client.get("/api/results/987654").status_code == 404


def test_bad_calibration_requests_are_refused_with_4xx(make_settings) -> None:
    settings = fast_settings(make_settings, queue="none")
    run_id, _ = seed_run(settings, [1, 10])
    app = create_app(settings, start_workers=False)
    with TestClient(app) as client:
        url = f"/api/runs/{run_id}/analyses"
        for grid in ({"lrs": []}, {"lrs": [-1.0]}, {"localizations": [-1.0]}, {"gamma": [1]}):
            r = client.post(url, json={"kinds": ["calibrate"], "calibrate": grid})
            assert r.status_code == 422, (grid, r.text)
        r = client.post(f"/api/runs/{run_id}/llc-settings", json={"lr": 0, "localization": 1})
        assert r.status_code == 422
        r = client.post("/api/runs/99999/llc-settings", json={"lr": 1e-3, "localization": 1})
        assert r.status_code == 404
