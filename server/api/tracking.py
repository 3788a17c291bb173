"""Tracker routes: a client's heartbeat and its finish (run status, ``server.tracking``)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from phaseboard.server.api.deps import SessionDep, SettingsDep, WriteAuth
from phaseboard.server.api.runs import get_run_or_404, runs_out
from phaseboard.server.schemas import DbId, RunFinish, RunOut

router = APIRouter(tags=["runs"])


@router.post("/runs/{run_id}/heartbeat", dependencies=[WriteAuth])
def heartbeat(run_id: DbId, session: SessionDep, settings: SettingsDep) -> RunOut:
    """The client is alive: the run is ``running`` until ``run_crashed_after_s`` of silence."""
    run = get_run_or_404(session, run_id)
    run.status = "running"
    run.heartbeat_at = datetime.now(UTC)
    session.commit()
    return runs_out(session, [run], settings.run_crashed_after_s)[0]


@router.post("/runs/{run_id}/finish", dependencies=[WriteAuth])
def finish(
    run_id: DbId, session: SessionDep, settings: SettingsDep, body: RunFinish | None = None
) -> RunOut:
    """The client is done: ``finished`` (or ``crashed`` when the script raised)."""
    run = get_run_or_404(session, run_id)
    run.status = (body or RunFinish()).status
    run.heartbeat_at = datetime.now(UTC)
    session.commit()
    return runs_out(session, [run], settings.run_crashed_after_s)[0]
