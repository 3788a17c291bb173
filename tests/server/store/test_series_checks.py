"""Series checks: equal weights at two steps flagged (API, planning, page, plots) and steps
missing from a regular schedule named — on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import torch

from phaseboard.analysis.checkpoints import save_safetensors_bytes
from phaseboard.server.db import Database
from phaseboard.server.models import Job
from phaseboard.server.store.series_checks import schedule_gaps
from tests.server.conftest import safetensors_bytes

DLN_3_4 = {"widths": [3, 4], "true_rank": 2}


def _dln_bytes(seed: int) -> bytes:
    """A checkpoint of the 3-4 deep linear network (one layer)."""
    g = torch.Generator().manual_seed(seed)
    return save_safetensors_bytes({"layers.0.weight": torch.randn(4, 3, generator=g)})


def _upload(client, run_id: int, data: bytes, step: int) -> dict:  # type: ignore[no-untyped-def]
    resp = client.post(
        f"/api/runs/{run_id}/checkpoints",
        files={"file": (f"s{step}.safetensors", data)},
        data={"step": str(step)},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (list(range(0, 1100, 100)), None),  # regular, complete
        ([0, 100, 200, 500, 600, 700, 800, 900, 1000], "2 steps are missing"),
        ([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 20_000, 1000)], None),  # Pythia's
        ([0, 1, 2, 4, 512, *[s for s in range(1000, 20_000, 1000) if s != 7000]], "1 step is"),
        ([1, 2, 4, 8, 32, 64, 128, 256], "log-spaced"),
        ([3, 17, 40, 41, 99], None),  # no schedule: nothing to say
        ([0, 10, 20], None),  # too short to tell
    ],
)
def test_schedule_gaps_name_missing_steps_only_in_a_regular_schedule(steps, message) -> None:  # type: ignore[no-untyped-def]
    gaps = schedule_gaps(steps)
    if message is None:
        assert gaps is None
    else:
        assert gaps is not None and message in gaps.describe()


def test_schedule_gaps_are_named_and_counted() -> None:
    gaps = schedule_gaps([s for s in range(0, 100_000, 100) if not 5000 <= s < 10_000])
    assert gaps is not None and gaps.count == 50 and gaps.missing[:2] == [5000, 5100]
    assert "50 steps are missing from a schedule of every 100 steps" in gaps.describe()
    assert gaps.describe().endswith("and 30 more")


def test_duplicate_flag_follows_the_highest_step_and_planning_skips_it(
    client, run_id, settings
) -> None:  # type: ignore[no-untyped-def]
    final = _dln_bytes(9)
    early = _upload(client, run_id, final, 3000)
    assert early["duplicate_of_step"] is None  # nothing to compare with yet
    _upload(client, run_id, _dln_bytes(1), 1000)
    last = _upload(client, run_id, final, 143000)
    assert last["duplicate_of_step"] is None and last["sha256"] == early["sha256"]
    assert client.get(f"/api/checkpoints/{early['id']}").json()["duplicate_of_step"] == 143000
    middle = _upload(client, run_id, final, 5000)  # a third holder: flagged at once
    assert middle["duplicate_of_step"] == 143000

    task = client.patch(f"/api/runs/{run_id}", json={"task": "dln", "task_config": DLN_3_4})
    assert task.status_code == 200, task.text  # the stored checkpoints fit its model
    resp = client.post(f"/api/runs/{run_id}/analyses", json={"kinds": ["noop"]})
    assert resp.status_code == 202, resp.text
    db = Database(settings)
    try:
        plan = client.post(f"/api/runs/{run_id}/analyses", json={"kinds": ["llc"]})
        assert plan.status_code == 202, plan.text
        with db.session() as s:
            planned = set(s.scalars(sa.select(Job.checkpoint_id).where(Job.kind == "llc")))
        assert planned == {c["id"] for c in (last,)} | {
            c["id"]
            for c in client.get(f"/api/runs/{run_id}/checkpoints").json()
            if c["step"] == 1000
        }
        asked = client.post(
            f"/api/runs/{run_id}/analyses", json={"kinds": ["llc"], "include_duplicates": True}
        )
        assert asked.status_code == 202
        with db.session() as s:
            planned = set(s.scalars(sa.select(Job.checkpoint_id).where(Job.kind == "llc")))
        assert {early["id"], middle["id"]} <= planned
    finally:
        db.dispose()


def test_run_page_and_plots_say_which_steps_share_weights_and_which_are_missing(
    client, run_id
) -> None:  # type: ignore[no-untyped-def]
    final = safetensors_bytes(5)
    for step in (0, 1000, 2000, 3000, 6000, 7000, 8000, 9000):
        _upload(client, run_id, final if step == 3000 else safetensors_bytes(step + 11), step)
    _upload(client, run_id, final, 10_000)
    html = client.get(f"/runs/{run_id}").text
    assert "1 checkpoint has the same weights as a later step" in html
    assert "step 3000 = step 10000" in html
    assert "step 3000 has the same weights as step 10000" in html  # the row's pill
    assert "2 steps are missing from a schedule of every 1000 steps: 4000, 5000" in html
    data = client.get(f"/api/runs/{run_id}/plotdata").json()
    assert data["checks"]["duplicates"] == [{"step": 3000, "of": 10000}]
    assert data["checks"]["missing"]["steps"] == [4000, 5000]
    clean = client.post("/api/runs", json={"name": "clean"}).json()["id"]
    _upload(client, clean, safetensors_bytes(1), 1)
    assert "data-series-duplicates" not in client.get(f"/runs/{clean}").text


def test_migration_flags_duplicates_stored_before_it(settings) -> None:  # type: ignore[no-untyped-def]
    """Checkpoints uploaded before ``duplicate_of_step`` existed get flagged by the upgrade."""
    from phaseboard.server.migrate import downgrade, upgrade

    downgrade(settings, "0006")
    engine = sa.create_engine(
        settings.database_url.replace("postgresql://", "postgresql+psycopg://")
    )
    a, b = "a" * 64, "b" * 64
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO runs (id, name, task_config, tags, notes, analysis_config, created_at,"
            " updated_at) VALUES (1, 'old', '{}', '[]', '', '{}', CURRENT_TIMESTAMP,"
            " CURRENT_TIMESTAMP)"
        ))  # fmt: skip
        for step, sha in ((3000, a), (1000, b), (143000, a), (5000, a)):
            conn.execute(
                sa.text("INSERT INTO checkpoints (run_id, step, sha256, size, format, n_params,"
                        " n_tensors, status, created_at) VALUES (1, :step, :sha, 1, 'safetensors',"
                        " 0, 0, 'ok', CURRENT_TIMESTAMP)"),
                {"step": step, "sha": sha},
            )  # fmt: skip
    upgrade(settings)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT step, duplicate_of_step FROM checkpoints")).all())
    engine.dispose()
    assert rows == {3000: 143000, 1000: None, 143000: None, 5000: 143000}
