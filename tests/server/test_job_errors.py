"""A failed job's message is public; its traceback only reaches a caller holding the token."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.planning import plan_jobs
from phaseboard.server.jobs.runner import _error_text
from phaseboard.server.models import Job, Run

TOKEN = "s3cret"


def _failed_job(app) -> int:  # type: ignore[no-untyped-def]
    try:
        raise RuntimeError("shapes do not match")
    except RuntimeError as exc:
        error = _error_text(exc)
    assert 'File "' in error  # the stored text has the traceback
    db = app.state.db
    with db.session() as s:
        run = Run(name="r")
        s.add(run)
        s.flush()
        (job_id,) = plan_jobs(s, run.id, ["noop"])
        s.execute(sa.update(Job).where(Job.id == job_id).values(state="failed", error=error))
    return job_id


@pytest.mark.parametrize(
    ("token", "sent", "shows_traceback"),
    [(None, None, False), (TOKEN, None, False), (TOKEN, "wrong", False), (TOKEN, TOKEN, True)],
    ids=["no-token-configured", "token-not-sent", "wrong-token", "token-sent"],
)
def test_job_traceback_only_with_the_token(
    make_settings, token: str | None, sent: str | None, shows_traceback: bool
) -> None:
    app = create_app(make_settings(api_token=token))
    with TestClient(app) as client:
        job_id = _failed_job(app)
        headers = {"Authorization": f"Bearer {sent}"} if sent else {}
        listed = client.get("/api/jobs", headers=headers).json()["jobs"][0]
        single = client.get(f"/api/jobs/{job_id}", headers=headers).json()
        for job in (listed, single):
            assert job["error"] == "RuntimeError: shapes do not match"
            if shows_traceback:
                assert job["traceback"].startswith("Traceback (most recent call last):")
                assert "shapes do not match" in job["traceback"]
            else:
                assert job["traceback"] is None
        page = client.get("/runs/1/jobs").text
        assert "shapes do not match" in page and "Traceback" not in page


def test_split_error_keeps_a_plain_message_whole() -> None:
    assert lifecycle.split_error("no handler for kind 'x'") == ("no handler for kind 'x'", None)
    assert lifecycle.split_error(None) == (None, None)
