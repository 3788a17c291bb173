"""The jobs API on SQLite and PostgreSQL (queue "none": jobs are planned, not run)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from tests.server.jobs.conftest import seed_run


def test_queue_analyses_dedupes_and_lists_jobs(client, settings) -> None:
    run_id, ckpts = seed_run(settings, [1, 10])
    body = {"kinds": ["llc", "llc_restricted"], "llc": {"num_draws": 9}}
    first = client.post(f"/api/runs/{run_id}/analyses", json=body)
    assert first.status_code == 202, first.text
    assert first.json()["queued"] == 4
    again = client.post(f"/api/runs/{run_id}/analyses", json=body)
    assert again.json()["job_ids"] == first.json()["job_ids"]
    one = client.post(f"/api/runs/{run_id}/analyses", json={"checkpoint_ids": [ckpts[1]]})
    assert len(one.json()["job_ids"]) == 3  # default analyses: metrics, llc, llc_restricted

    listed = client.get("/api/jobs", params={"run_id": run_id, "state": "queued"}).json()
    assert listed["total"] == 7 and listed["counts"]["queued"] == 7
    job = client.get(f"/api/jobs/{first.json()['job_ids'][0]}").json()
    assert job["kind"] == "llc" and job["config"]["num_draws"] == 9 and job["state"] == "queued"
    assert job["lens"] == "llc"  # the one word; "kind" stays as its older name
    by_lens = client.get("/api/jobs", params={"run_id": run_id, "lens": "llc_restricted"}).json()
    assert by_lens["total"] == 3 and {j["lens"] for j in by_lens["jobs"]} == {"llc_restricted"}
    by_kind = client.get("/api/jobs", params={"run_id": run_id, "kind": "llc_restricted"}).json()
    assert by_kind["total"] == 3
    both = client.get("/api/jobs", params={"lens": "llc", "kind": "metrics"})
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    assert client.get("/api/jobs/999999").status_code == 404
    assert client.get("/api/jobs", params={"state": "bogus"}).status_code == 422
    bad = client.post(f"/api/runs/{run_id}/analyses", json={"kinds": ["astrology"]})
    assert bad.status_code == 422 and "astrology" in bad.json()["detail"]
    typo = client.post(f"/api/runs/{run_id}/analyses", json={"llc": {"num_drawz": 3}})
    assert typo.status_code == 422 and "num_drawz" in typo.json()["detail"]
    missing = client.post(f"/api/runs/{run_id}/analyses", json={"checkpoint_ids": [424242]})
    assert missing.status_code == 404
    assert client.get(f"/api/runs/{run_id}/llc").json() == {"run_id": run_id, "points": []}


def test_llc_endpoint_groups_restrictions_per_checkpoint(client, settings) -> None:
    run_id, ckpts = seed_run(settings, [3])
    ids = client.post(
        f"/api/runs/{run_id}/analyses", json={"kinds": ["llc", "llc_restricted"]}
    ).json()["job_ids"]
    db = Database(settings)
    llc = {"mean": 1.5, "std": 0.1, "per_chain": [1.4, 1.6], "diverged": []}
    lease = lifecycle.claim(db, ids[0], "w")
    assert lease and lifecycle.finish(db, lease, [{"restriction": "", "values": llc}])
    lease = lifecycle.claim(db, ids[1], "w")
    rows = [
        {"restriction": "weights:layers.0", "values": {**llc, "mean": 0.5}},
        {"restriction": "data:first_half", "values": {**llc, "mean": 0.7, "diverged": [1]}},
    ]
    assert lease and lifecycle.finish(db, lease, rows)
    db.dispose()
    (point,) = client.get(f"/api/runs/{run_id}/llc").json()["points"]
    assert point["step"] == 3 and point["mean"] == 1.5 and point["std"] == 0.1
    assert point["restrictions"]["weights:layers.0"]["mean"] == 0.5
    assert point["restrictions"]["data:first_half"]["diverged"] is True
    for name in ("lens", "kind"):
        results = client.get(f"/api/runs/{run_id}/results", params={name: "llc_restricted"})
        assert sorted(r["restriction"] for r in results.json()["results"]) == [
            "data:first_half",
            "weights:layers.0",
        ]
        assert {r["lens"] for r in results.json()["results"]} == {"llc_restricted"}


def test_job_writes_need_the_token_when_one_is_set(make_settings) -> None:
    settings = make_settings(api_token="s3cret")
    run_id, _ = seed_run(settings, [1])
    with TestClient(create_app(settings)) as client:
        assert client.post(f"/api/runs/{run_id}/analyses", json={}).status_code == 401
        assert client.post("/api/jobs/1/cancel").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        body = {"kinds": ["llc"]}
        resp = client.post(f"/api/runs/{run_id}/analyses", json=body, headers=auth)
        (job_id,) = resp.json()["job_ids"]
        resp = client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
        assert resp.json()["state"] == "cancelled"
        assert client.get(f"/api/jobs/{job_id}").status_code == 200
