"""What the JSON routes and the pages read through the shared read layer (``server.read``).

"The run or 404" is one dependency (``RunDep``): every ``/api/runs/{run_id}/...`` read
answers an unknown run alike. The per-checkpoint metrics scalars are read one way for the
plots, the lens section's progress panels and the group bands: the newest result of a
checkpoint wins. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from phaseboard.server.models import Checkpoint, Result
from tests.browser.seed import seed_runs

UNKNOWN = 987654


@pytest.fixture
def seeded(client):  # type: ignore[no-untyped-def]
    return seed_runs(client.app.state.db, n_ckpt=5, n_points=20)


def _run_reads(client) -> list[str]:  # type: ignore[no-untyped-def]
    """Every GET route of the API whose path names a run."""
    paths = client.get("/openapi.json").json()["paths"]
    return sorted(p for p, ops in paths.items() if "{run_id}" in p and "get" in ops)


def test_every_run_read_answers_an_unknown_run_with_the_same_404(client) -> None:
    reads = _run_reads(client)
    assert "/api/runs/{run_id}/plotdata" in reads and len(reads) >= 10, reads
    for path in reads:
        url = re.sub(r"\{\w+\}", "0", path.replace("{run_id}", str(UNKNOWN)))
        resp = client.get(url, params={"name": "x"})
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json() == {"error": "not_found", "detail": f"run {UNKNOWN} does not exist"}


def test_plotdata_keeps_its_url_and_is_described_with_the_api(client, seeded) -> None:
    schema = client.get("/openapi.json").json()["paths"]["/api/runs/{run_id}/plotdata"]["get"]
    assert schema["tags"] == ["plots"]
    assert {p["name"] for p in schema["parameters"]} >= {"run_id", "max_points", "llc_settings"}
    data = client.get(f"/api/runs/{seeded.run_id}/plotdata").json()
    assert data["run"]["id"] == seeded.run_id
    assert {"series", "llc", "restricted", "boundaries", "checks"} <= set(data)
    bad = client.get(f"/api/runs/{seeded.run_id}/plotdata", params={"max_points": 1})
    assert bad.status_code == 422


def test_a_remeasured_checkpoint_shows_its_newest_metrics_once_everywhere(client, seeded) -> None:
    db = client.app.state.db
    with db.session() as s:
        ckpt = s.scalars(
            select(Checkpoint).where(Checkpoint.run_id == seeded.run_id).order_by(Checkpoint.step)
        ).first()
        assert ckpt is not None
        step = ckpt.step
        s.add(
            Result(
                run_id=seeded.run_id,
                checkpoint_id=ckpt.id,
                step=step,
                kind="metrics",
                values={"train_loss": 0.125, "progress/gini": 0.5},
            )
        )
        s.commit()

    series = client.get(f"/api/runs/{seeded.run_id}/plotdata").json()["series"]
    train = series["ckpt/train_loss"]
    assert train["step"].count(step) == 1
    assert train["value"][train["step"].index(step)] == 0.125
    assert train["count"] == len(train["step"]) == 5
    assert series["ckpt/progress/gini"] == {"step": [step], "value": [0.5], "count": 1}

    progress = client.get(f"/api/runs/{seeded.run_id}/lenses").json()["progress"]
    assert progress == {"gini": {"step": [step], "value": [0.5]}}

    bands = client.get(
        "/api/groups/bands",
        params={"runs": str(seeded.run_id), "series": "ckpt/train_loss"},
    ).json()
    (member,) = bands["series"]["ckpt/train_loss"]["runs"]
    assert member["step"].count(step) == 1
    assert member["value"][member["step"].index(step)] == 0.125
