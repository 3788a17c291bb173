"""Each lens's state on a run, in one word and one line: what the API and the run page show.

Read from the run's job rows (the SQL store is the truth): ``running``, ``queued``,
``waiting`` ("waiting for a 2nd checkpoint"), ``not_applicable`` (why), ``failed`` (the
error), ``done``, ``cancelled``, or ``idle`` (never queued on this run). A run-scope lens is
in the state of its newest job (an older failure is history once a newer run finished); a
per-checkpoint lens sums its checkpoints' jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.lenses._registry import Lens, all_lenses
from phaseboard.server.models import Job

STATES = (
    "running",
    "queued",
    "waiting",
    "not_applicable",
    "failed",
    "done",
    "cancelled",
    "idle",
)


@dataclass
class LensState:
    """One lens on one run."""

    lens: str
    title: str
    scope: str
    state: str
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Newest:
    state: str
    progress_msg: str
    error: str | None


def lens_states(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """``{lens: LensState as a dict}`` for every lens shown to users (not the internal
    ones), in registry order."""
    from phaseboard.server.jobs.lifecycle import split_error

    counts: dict[str, dict[str, int]] = {}
    for kind, state, n in session.execute(
        sa.select(Job.kind, Job.state, sa.func.count())
        .where(Job.run_id == run_id)
        .group_by(Job.kind, Job.state)
    ):
        counts.setdefault(kind, {})[state] = int(n)
    newest_ids = (
        sa.select(sa.func.max(Job.id)).where(Job.run_id == run_id).group_by(Job.kind)
    ).scalar_subquery()
    newest = {
        kind: _Newest(state, msg or "", split_error(error)[0])
        for kind, state, msg, error in session.execute(
            sa.select(Job.kind, Job.state, Job.progress_msg, Job.error).where(
                Job.id.in_(newest_ids)
            )
        )
    }
    failed_error = _first_failure(session, run_id)
    out: dict[str, dict[str, Any]] = {}
    for lens in all_lenses(internal=False):
        state = describe(lens, counts.get(lens.name, {}), newest.get(lens.name), failed_error)
        out[lens.name] = state.to_dict()
    return out


def _first_failure(session: Session, run_id: int) -> dict[str, str]:
    """The newest error of each lens's failed jobs on the run (the message only)."""
    from phaseboard.server.jobs.lifecycle import split_error

    ids = (
        sa.select(sa.func.max(Job.id))
        .where(Job.run_id == run_id, Job.state == "failed")
        .group_by(Job.kind)
    ).scalar_subquery()
    rows = session.execute(sa.select(Job.kind, Job.error).where(Job.id.in_(ids)))
    return {kind: split_error(error)[0] or "failed" for kind, error in rows}


def describe(
    lens: Lens,
    counts: dict[str, int],
    newest: _Newest | None,
    failed_error: dict[str, str],
) -> LensState:
    """The lens's state from its job counts by state and its newest job."""
    base = {"lens": lens.name, "title": lens.title, "scope": lens.scope, "counts": counts}
    total = sum(counts.values())
    if newest is None or not total:
        return LensState(**base, state="idle", message="not queued on this run")
    if counts.get("running"):
        message = newest.progress_msg if newest.state == "running" else "running"
        return LensState(**base, state="running", message=message)
    if counts.get("queued"):
        return LensState(**base, state="queued", message=f"{counts['queued']} queued")
    if lens.scope == "run" or newest.state in ("waiting", "not_applicable"):
        if newest.state == "waiting":
            return LensState(**base, state="waiting", message=newest.progress_msg)
        if newest.state == "not_applicable":
            return LensState(**base, state="not_applicable", message=newest.progress_msg)
        if newest.state == "failed":
            return LensState(**base, state="failed", message=newest.error or "failed")
        if newest.state == "done":
            return LensState(**base, state="done")
        return LensState(**base, state=newest.state, message=newest.progress_msg)
    failed, done = counts.get("failed", 0), counts.get("done", 0)
    if failed:
        message = f"{failed} of {total} checkpoints failed: {failed_error.get(lens.name, '')}"
        return LensState(**base, state="failed", message=message)
    if done:
        return LensState(**base, state="done", message=f"{done} checkpoint(s)")
    return LensState(**base, state="cancelled", message=f"{total} cancelled")
