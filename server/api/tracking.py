"""Tracker routes: a client's heartbeat and its finish (run status, ``server.tracking``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from phaseboard.server.api.runs import runs_out
from phaseboard.server.deps import RunDep, SessionDep, SettingsDep, WriteAuth
from phaseboard.server.schemas import RunFinish, RunOut

router = APIRouter(tags=["runs"])
log = logging.getLogger("phaseboard.api")


@router.post("/runs/{run_id}/heartbeat", dependencies=[WriteAuth])
def heartbeat(run: RunDep, session: SessionDep, settings: SettingsDep) -> RunOut:
    """The client is alive: the run is ``running`` until ``run_crashed_after_s`` of silence."""
    run.status = "running"
    run.heartbeat_at = datetime.now(UTC)
    session.commit()
    return runs_out(session, [run], settings.run_crashed_after_s)[0]


@router.post("/runs/{run_id}/finish", dependencies=[WriteAuth])
def finish(
    run: RunDep,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    body: RunFinish | None = None,
) -> RunOut:
    """The client is done: ``finished`` (or ``crashed`` when the script raised, or
    ``imported`` when an import ended). The run's checkpoints have settled: an automatic
    LLC calibration its LLC jobs wait for starts now."""
    run.status = (body or RunFinish()).status
    run.heartbeat_at = datetime.now(UTC)
    session.commit()
    try:
        request.app.state.queue.run_settled(run.id)
    except Exception:  # noqa: BLE001 - the finish is stored; the workers' sweep starts it later
        log.exception("run %s: could not start its LLC calibration", run.id)
    return runs_out(session, [run], settings.run_crashed_after_s)[0]
