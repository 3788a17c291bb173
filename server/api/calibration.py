"""LLC trust: one result's full payload (traces, diagnostics), a run's latest calibration,
and "use these settings for this run" (sets the run's LLC settings, queues LLC jobs)."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from phaseboard.server import read
from phaseboard.server.analysis_config import SAMPLERS, check_llc
from phaseboard.server.db import get_existing
from phaseboard.server.deps import DatabaseDep, RunDep, SessionDep, WriteAuth
from phaseboard.server.jobs.planning import (
    LLC_KINDS,
    analyses_for_run,
    llc_settings,
    llc_settings_hash,
)
from phaseboard.server.jobs.schemas import ResultOut
from phaseboard.server.models import Checkpoint, Job, Result
from phaseboard.server.schemas import DbId

router = APIRouter(tags=["llc"])


class LLCSettingsUpdate(BaseModel):
    """SGLD settings to use for a run from now on (the rest of its LLC settings stay).

    Checked like every LLC config (``server.analysis_config.check_llc``: ``LLCConfig``'s
    rules and the server's bounds), merged over the run's current ones."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(gt=0, allow_inf_nan=False)
    localization: float = Field(ge=0, allow_inf_nan=False)
    n_beta: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    sampler: Literal[SAMPLERS] | None = None  # type: ignore[valid-type]


class LLCSettingsOut(BaseModel):
    run_id: int
    llc: dict[str, Any]
    settings_hash: str
    job_ids: list[int]


@router.get("/results/{result_id}", response_model=ResultOut)
def get_result(result_id: DbId, session: SessionDep) -> ResultOut:
    """One result row with its whole payload (an LLC's traces, verdict, diagnostics)."""
    result = get_existing(session, Result, result_id, "result")
    out = ResultOut.model_validate(result)
    if result.job_id is not None:  # the settings it was computed with
        job = session.get(Job, result.job_id)
        if job is not None and result.kind in LLC_KINDS:
            cfg = {k: v for k, v in job.config.items() if k != "restrictions"}
            out.values = {**out.values, "settings": cfg}
    return out


@router.get("/runs/{run_id}/calibration")
def latest_calibration(run: RunDep, session: SessionDep) -> dict[str, Any]:
    """The newest finished calibration of a run (null if none), and any still running."""
    row = session.execute(
        sa.select(Result.id, Result.values, Result.created_at)
        .where(Result.run_id == run.id, Result.kind == "calibrate")
        .order_by(Result.id.desc())
        .limit(1)
    ).first()
    active = session.scalars(
        sa.select(Job.id).where(
            Job.run_id == run.id, Job.kind == "calibrate", Job.state.in_(("queued", "running"))
        )
    ).all()
    current = llc_settings(run)
    return {
        "run_id": run.id,
        "result_id": None if row is None else row[0],
        "calibration": None if row is None else row[1],
        "active_jobs": list(active),
        "current": {k: current.get(k) for k in ("lr", "localization", "n_beta", "sampler")},
    }


@router.post(
    "/runs/{run_id}/llc-settings",
    response_model=LLCSettingsOut,
    status_code=202,
    dependencies=[WriteAuth],
)
def use_llc_settings(
    run_id: DbId, body: LLCSettingsUpdate, db: DatabaseDep, request: Request
) -> LLCSettingsOut:
    """Make these the run's LLC settings and queue LLC jobs with them on every checkpoint.

    Results of the old settings are kept: they are another series on the run page.
    """
    changes = body.model_dump(exclude_unset=True)
    if changes.get("sampler") is None:
        changes.pop("sampler", None)
    with db.session() as s:
        run = read.get_run(s, run_id)
        cfg = dict(run.analysis_config or {})
        current = cfg.get("llc") if isinstance(cfg.get("llc"), dict) else None
        check_llc(request.app.state.settings, current, changes, prefix="llc")
        cfg["llc"] = {**(cfg.get("llc") or {}), **changes}
        run.analysis_config = cfg
        s.flush()
        settings = llc_settings(run)
        kinds = analyses_for_run(run, request.app.state.settings.auto_analyses)
        has_restricted = s.scalar(
            sa.select(sa.func.count()).where(
                Result.run_id == run_id, Result.kind == "llc_restricted"
            )
        )
        any_ckpt = s.scalar(sa.select(sa.func.count()).where(Checkpoint.run_id == run_id))
    wanted = ["llc"] + (["llc_restricted"] if has_restricted or "llc_restricted" in kinds else [])
    queue = request.app.state.queue
    ids = queue.plan_and_enqueue(run_id, wanted) if any_ckpt else []
    return LLCSettingsOut(
        run_id=run_id, llc=settings, settings_hash=llc_settings_hash(settings), job_ids=ids
    )
