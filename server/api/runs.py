"""Runs: create, list (search, filter, sort), read, update, delete."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from phaseboard.server import read
from phaseboard.server.analysis_config import check_analysis_config
from phaseboard.server.db import name_contains
from phaseboard.server.deps import RunDep, SessionDep, SettingsDep, WriteAuth
from phaseboard.server.errors import BadInput, Conflict
from phaseboard.server.models import Checkpoint, Job, Run
from phaseboard.server.runs_table import matching_ids
from phaseboard.server.schemas import DbId, DbInt, RunCreate, RunOut, RunUpdate, Text
from phaseboard.server.task_change import (
    analyse_stored_checkpoints,
    check_stored_checkpoints,
    task_changed,
)
from phaseboard.server.task_checks import check_task_config
from phaseboard.server.tracking import STATUSES, effective_status, status_clause

router = APIRouter(tags=["runs"])

SORTS = {
    "created": Run.created_at.asc(),
    "-created": Run.created_at.desc(),
    "updated": Run.updated_at.asc(),
    "-updated": Run.updated_at.desc(),
    "name": Run.name.asc(),
    "-name": Run.name.desc(),
}


def _latest(*times: datetime | None) -> datetime | None:
    """The latest of some timestamps, as aware UTC (SQLite hands back naive UTC ones)."""
    present = [t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC) for t in times if t]
    return max(present) if present else None


def runs_out(session: Session, runs: list[Run], crashed_after_s: float = 120.0) -> list[RunOut]:
    """Runs with checkpoint counts, job counts by state and last activity (3 queries).

    ``crashed_after_s`` (``Settings.run_crashed_after_s``) turns stale ``running`` into crashed.
    """
    ids = [r.id for r in runs]
    if not ids:
        return []
    ckpts = {
        rid: (n, last)
        for rid, n, last in session.execute(
            select(Checkpoint.run_id, func.count(), func.max(Checkpoint.created_at))
            .where(Checkpoint.run_id.in_(ids))
            .group_by(Checkpoint.run_id)
        )
    }
    jobs: dict[int, dict[str, int]] = {}
    job_last: dict[int, datetime | None] = {}
    for rid, state, n, last in session.execute(
        select(Job.run_id, Job.state, func.count(), func.max(Job.created_at))
        .where(Job.run_id.in_(ids))
        .group_by(Job.run_id, Job.state)
    ):
        jobs.setdefault(rid, {})[state] = n
        job_last[rid] = _latest(job_last.get(rid), last)
    out = []
    for run in runs:
        n_ckpt, ckpt_last = ckpts.get(run.id, (0, None))
        item = RunOut.model_validate(run)
        item.checkpoint_count = n_ckpt
        item.jobs = jobs.get(run.id, {})
        item.last_activity = _latest(run.updated_at, ckpt_last, job_last.get(run.id))
        item.status = effective_status(run, crashed_after_s)
        out.append(item)
    return out


def _name_taken(session: Session, name: str, exclude_id: int | None = None) -> bool:
    q = select(Run.id).where(Run.name == name)
    if exclude_id is not None:
        q = q.where(Run.id != exclude_id)
    return session.scalar(q) is not None


def _commit_or_conflict(session: Session, name: str) -> None:
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent create won the race for the name
        session.rollback()
        raise Conflict(f"a run named {name!r} already exists") from exc


@router.post("/runs", status_code=201, dependencies=[WriteAuth])
def create_run(body: RunCreate, session: SessionDep, settings: SettingsDep) -> RunOut:
    """Create a run; its ``name`` is unique (409 otherwise)."""
    check_analysis_config(settings, body.analysis_config)
    check_task_config(settings, body.task, body.task_config)
    if _name_taken(session, body.name):
        raise Conflict(f"a run named {body.name!r} already exists")
    run = Run(**body.model_dump())
    if run.status == "running":
        run.heartbeat_at = datetime.now(UTC)
    session.add(run)
    _commit_or_conflict(session, body.name)
    return runs_out(session, [run], settings.run_crashed_after_s)[0]


@router.get("/runs")
def list_runs(
    session: SessionDep,
    settings: SettingsDep,
    q: Annotated[
        Text | None, Query(description="Substring of the name (case-insensitive).")
    ] = None,
    tag: Annotated[Text | None, Query(description="Only runs carrying this tag.")] = None,
    task: Annotated[Text | None, Query(description="Only runs of this task.")] = None,
    status: Annotated[
        Text | None, Query(description="created | running | finished | crashed | imported.")
    ] = None,
    filter: Annotated[
        Text | None,
        Query(description="Filter language, e.g. 'config.lr < 1e-3 and summary.loss.min < 0.1'."),
    ] = None,
    sort: Annotated[str, Query(description=f"One of: {', '.join(SORTS)}.")] = "-created",
    limit: Annotated[DbInt, Query(ge=1, le=1000)] = 200,
    offset: Annotated[DbInt, Query()] = 0,
) -> list[RunOut]:
    if sort not in SORTS:
        raise BadInput(f"sort: unknown order {sort!r}; use one of {', '.join(SORTS)}")
    query = select(Run)
    if q:
        query = query.where(name_contains(Run.name, q))
    if task:
        query = query.where(Run.task == task)
    if status:
        if status not in STATUSES:
            raise BadInput(f"status: unknown {status!r}; use one of {', '.join(STATUSES)}")
        query = query.where(status_clause(status, settings.run_crashed_after_s))
    query = query.order_by(SORTS[sort], Run.id)
    if tag or filter:  # JSON fields: filtered in Python (``server.runs_table``), same on both
        keep = matching_ids(
            session,
            crashed_after_s=settings.run_crashed_after_s,
            q=q or "",
            task=task or "",
            tag=tag or "",
            filter=filter or "",
        )
        ordered = session.scalars(query.with_only_columns(Run.id))
        page = [rid for rid in ordered if rid in keep][offset : offset + limit]
        by_id = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(page)))}
        runs = [by_id[rid] for rid in page if rid in by_id]
    else:
        runs = list(session.scalars(query.offset(offset).limit(limit)))
    return runs_out(session, runs, settings.run_crashed_after_s)


@router.get("/runs/{run_id}")
def get_run(run: RunDep, session: SessionDep, settings: SettingsDep) -> RunOut:
    return runs_out(session, [run], settings.run_crashed_after_s)[0]


@router.patch("/runs/{run_id}", dependencies=[WriteAuth])
def update_run(
    run_id: DbId, body: RunUpdate, session: SessionDep, settings: SettingsDep, request: Request
) -> RunOut:
    """Change only the fields given; a rename onto an existing name is a 409.

    ``null`` clears a field (``task`` to none, ``notes`` to "", ``tags`` to [], a config
    to {}); a run always has a name, so ``name`` may not be null. A new task (or task
    config) on a run with checkpoints is checked against them first (422 naming the one
    that does not fit, nothing changed) and then queues their analyses
    (``server.task_change``).
    """
    run = read.get_run(session, run_id)
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        raise BadInput("name: may not be null (a run always has a name)")
    for key, empty in RunUpdate.CLEARED.items():
        if key in changes and changes[key] is None:
            changes[key] = empty()
    check_analysis_config(settings, changes.get("analysis_config"))
    check_task_config(
        settings, changes.get("task", run.task), changes.get("task_config", run.task_config or {})
    )
    if "name" in changes and _name_taken(session, changes["name"], exclude_id=run_id):
        raise Conflict(f"a run named {changes['name']!r} already exists")
    before = (run.task, run.task_config)
    for key, value in changes.items():
        setattr(run, key, value)
    new_task = task_changed(before, run)
    if new_task:
        check_stored_checkpoints(session, settings, request.app.state.store, run)
    _commit_or_conflict(session, run.name)
    if new_task:
        analyse_stored_checkpoints(request.app.state.queue, run_id)
    return runs_out(session, [run], settings.run_crashed_after_s)[0]


@router.delete("/runs/{run_id}", status_code=204, dependencies=[WriteAuth])
def delete_run(run: RunDep, session: SessionDep) -> Response:
    """Delete the run and its rows (checkpoints, metrics, jobs, results, boundaries).

    Blobs stay in the store: another run may hold the same bytes. ``phaseboard gc``
    removes the ones no checkpoint references any more (``server.blob_gc``).
    """
    session.delete(run)
    session.commit()
    return Response(status_code=204)
