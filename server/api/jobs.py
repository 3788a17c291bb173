"""Jobs and analysis results: list/inspect/cancel/retry jobs, queue analyses, read LLCs."""

from __future__ import annotations

from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request

from phaseboard.server import read
from phaseboard.server.analysis_config import check_kinds, check_llc
from phaseboard.server.db import get_existing
from phaseboard.server.deps import DatabaseDep, RunDep, SessionDep, WriteAuth, has_token
from phaseboard.server.errors import BadInput
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.base import JobQueue
from phaseboard.server.jobs.planning import analyses_for_run, llc_lens_names
from phaseboard.server.jobs.schemas import (
    AnalysesRequest,
    AnalysesResponse,
    JobList,
    JobOut,
    LLCPoint,
    LLCSeries,
    LLCValue,
    ResultList,
    ResultOut,
)
from phaseboard.server.models import Job, Result
from phaseboard.server.schemas import DbId, DbInt, Text

router = APIRouter(tags=["jobs"])
STATES = lifecycle.STATES


def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


def _job(session: Any, job_id: int) -> Job:
    return get_existing(session, Job, job_id, "job")


def _job_out(job: Job, request: Request) -> JobOut:
    """A job as the API shows it: the error's traceback only to a token holder."""
    out = JobOut.model_validate(job)
    out.error, traceback = lifecycle.split_error(job.error)
    out.traceback = traceback if has_token(request) else None
    return out


T = TypeVar("T")


def _newer_name(new: T | None, old: T | None, names: str) -> T | None:
    """A parameter given under its name or its older one (``names``: "new or old");
    both only when they agree."""
    if new is not None and old is not None and new != old:
        raise BadInput(f"give {names} (the same under its older name), not both")
    return new if new is not None else old


def _one_lens(lens: str | None, kind: str | None) -> str | None:
    return _newer_name(lens, kind, "lens or kind")


@router.get("/jobs", response_model=JobList)
def list_jobs(
    session: SessionDep,
    request: Request,
    run_id: DbId | None = None,
    state: str | None = Query(None, description=" | ".join(STATES)),
    lens: Text | None = Query(None, description="Only jobs of this lens (e.g. llc)."),
    kind: Text | None = Query(None, description="The same filter under its older name."),
    limit: DbInt = Query(200, ge=1, le=5000),
    offset: DbInt = 0,
) -> JobList:
    """Jobs, newest first, with per-state counts under the same run/lens filters."""
    if state is not None and state not in STATES:
        raise BadInput(f"state must be one of {', '.join(STATES)}")
    where = []
    if run_id is not None:
        where.append(Job.run_id == run_id)
    if (lens := _one_lens(lens, kind)) is not None:
        where.append(Job.kind == lens)
    by_state = sa.select(Job.state, sa.func.count()).where(*where).group_by(Job.state)
    counts = {st: int(n) for st, n in session.execute(by_state)}
    if state is not None:
        where.append(Job.state == state)
    jobs = session.scalars(
        sa.select(Job).where(*where).order_by(Job.id.desc()).limit(limit).offset(offset)
    ).all()
    total = sum(counts.values()) if state is None else counts.get(state, 0)
    return JobList(
        jobs=[_job_out(j, request) for j in jobs],
        total=total,
        counts={s: counts.get(s, 0) for s in STATES},
    )


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: DbId, session: SessionDep, request: Request) -> JobOut:
    return _job_out(_job(session, job_id), request)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, dependencies=[WriteAuth])
def cancel_job(job_id: DbId, db: DatabaseDep, request: Request) -> JobOut:
    """Cancel a queued job, or stop a running one at its next progress report."""
    with db.session() as s:
        job = lifecycle.cancel(s, job_id)
        out = _job_out(job, request)
    return out


@router.post("/jobs/{job_id}/retry", response_model=JobOut, dependencies=[WriteAuth])
def retry_job(job_id: DbId, db: DatabaseDep, request: Request) -> JobOut:
    """Queue a failed, cancelled or not-applicable job again (the last checks again)."""
    with db.session() as s:
        job = lifecycle.retry(s, job_id)
        out = _job_out(job, request)
    _queue(request).enqueue([job_id])
    return out


@router.post(
    "/runs/{run_id}/analyses",
    response_model=AnalysesResponse,
    status_code=202,
    dependencies=[WriteAuth],
)
def queue_analyses(
    run_id: DbId, body: AnalysesRequest, db: DatabaseDep, request: Request
) -> AnalysesResponse:
    """Queue lenses on a run's existing checkpoints; identical work is not repeated.

    A lens that needs more checkpoints than the run has waits (``waiting`` in the answer)
    and runs when they arrive; one found not to apply to the run's task says so once
    (``not_applicable``)."""
    queue = _queue(request)
    settings = request.app.state.settings
    named = _newer_name(body.lenses, body.kinds, "lenses or kinds")
    field = "lenses" if body.lenses is not None else "kinds"
    with db.session() as s:
        run = read.get_run(s, run_id)
        kinds = named
        if kinds is None:
            kinds = analyses_for_run(run, settings.auto_analyses)
        check_kinds(kinds, field)
        llc = body.llc.model_dump(exclude_unset=True) if body.llc is not None else None
        if any(k in llc_lens_names() for k in kinds):  # the config a job would get, now
            check_llc(settings, (run.analysis_config or {}).get("llc"), llc)
    config: dict[str, Any] = {}
    if llc is not None:
        config["llc"] = llc
    if body.restrictions is not None:
        config["restrictions"] = body.restrictions
    if body.device is not None:  # checked by plan_jobs
        config["device"] = body.device
    if body.calibrate is not None:
        config["calibrate"] = body.calibrate.checked()
    if body.include_duplicates:  # read by plan_jobs
        config["include_duplicates"] = True
    ids = queue.plan_and_enqueue(run_id, kinds, body.checkpoint_ids, config)
    with db.session() as s:
        rows = s.execute(
            sa.select(Job.kind, Job.state, Job.progress_msg).where(Job.id.in_(ids or [-1]))
        ).all()
    return AnalysesResponse(
        run_id=run_id,
        job_ids=ids,
        queued=sum(state in lifecycle.ACTIVE for _, state, _ in rows),
        waiting={k: msg for k, state, msg in rows if state == lifecycle.WAITING},
        not_applicable={k: msg for k, state, msg in rows if state == "not_applicable"},
    )


def _llc_value(values: dict[str, Any], job_id: int | None = None) -> LLCValue:
    return LLCValue(
        mean=values.get("mean"),
        std=values.get("std"),
        per_chain=list(values.get("per_chain") or []),
        diverged=_diverged(values),
        job_id=job_id,
        verdict=values.get("verdict"),
        n_beta=values.get("n_beta"),
    )


def _diverged(values: dict[str, Any]) -> bool | None:
    d = values.get("diverged")
    if isinstance(d, list):
        return any(bool(x) for x in d)
    return None if d is None else bool(d)


@router.get("/runs/{run_id}/llc", response_model=LLCSeries)
def run_llc(
    run: RunDep,
    session: SessionDep,
    config_hash: Text | None = Query(None, description="Only results of this LLC config."),
) -> LLCSeries:
    """Per checkpoint: step, LLC mean and std, and each restriction's estimate (newest)."""
    query = (
        sa.select(Result)
        .where(Result.run_id == run.id, Result.kind.in_(("llc", "llc_restricted")))
        .order_by(Result.step, Result.id)
    )
    if config_hash is not None:
        query = query.join(Job, Job.id == Result.job_id).where(Job.config_hash == config_hash)
    points: dict[int | None, LLCPoint] = {}
    for r in session.scalars(query):
        point = points.setdefault(
            r.checkpoint_id,
            LLCPoint(checkpoint_id=r.checkpoint_id, step=r.step, mean=None, std=None),
        )
        if r.kind == "llc" and r.restriction == "":
            v = _llc_value(r.values)
            point.mean, point.std, point.per_chain, point.diverged = (
                v.mean,
                v.std,
                v.per_chain,
                v.diverged,
            )
            point.verdict, point.n_beta = v.verdict, v.n_beta
        else:
            point.restrictions[r.restriction or r.kind] = _llc_value(r.values, r.job_id)
    ordered = sorted(points.values(), key=lambda p: (p.step is None, p.step or 0))
    return LLCSeries(run_id=run.id, points=ordered)


@router.get("/runs/{run_id}/results", response_model=ResultList)
def run_results(
    run: RunDep,
    session: SessionDep,
    lens: Text | None = Query(None, description="Only results of this lens (e.g. llc)."),
    kind: Text | None = Query(None, description="The same filter under its older name."),
    restriction: Text | None = None,
) -> ResultList:
    """Raw result rows of a run, ordered by step."""
    query = sa.select(Result).where(Result.run_id == run.id)
    if (lens := _one_lens(lens, kind)) is not None:
        query = query.where(Result.kind == lens)
    if restriction is not None:
        query = query.where(Result.restriction == restriction)
    rows = session.scalars(query.order_by(Result.step, Result.id)).all()
    return ResultList(run_id=run.id, results=[ResultOut.model_validate(r) for r in rows])
