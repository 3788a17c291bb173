"""A run's jobs panel: counts by state, the active and failed jobs, each lens's state, and
the time left per lens from the measured throughput."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from phaseboard.server.jobs.lifecycle import ACTIVE, split_error
from phaseboard.server.models import Checkpoint, Job


def jobs_panel(session: Session, run_id: int, limit: int = 30) -> dict[str, Any]:
    """Job counts by state plus the active and most recent failed jobs of a run, and each
    lens's state on it (``server.lenses._states``)."""
    from phaseboard.server.lenses._states import lens_states

    counts = dict(
        session.execute(
            select(Job.state, func.count()).where(Job.run_id == run_id).group_by(Job.state)
        ).all()
    )
    shown = session.scalars(
        select(Job)
        .where(Job.run_id == run_id, Job.state.in_((*ACTIVE, "failed")))
        .order_by(Job.state.desc(), Job.id.desc())
        .limit(limit)
    ).all()
    ckpt_ids = {j.checkpoint_id for j in shown if j.checkpoint_id}
    # Only the shown jobs' checkpoints: this panel is polled while jobs run.
    by_id = select(Checkpoint.id, Checkpoint.step).where(Checkpoint.id.in_(ckpt_ids))
    steps = dict(session.execute(by_id).all())
    jobs = [
        {
            "id": j.id,
            "kind": j.kind,
            "restriction": j.restriction,
            "step": steps.get(j.checkpoint_id) if j.checkpoint_id else None,
            "state": j.state,
            "progress": max(0.0, min(1.0, j.progress or 0.0)),
            "progress_msg": j.progress_msg,
            "error": split_error(j.error)[0],
            "attempts": j.attempts,
        }
        for j in shown
    ]
    jobs.sort(key=lambda j: (["running", "queued", "failed"].index(j["state"]), -j["id"]))
    active = sum(counts.get(s, 0) for s in ACTIVE)
    return {
        "counts": counts,
        "active": active,
        "done": counts.get("done", 0),
        "total": sum(counts.values()),
        "jobs": jobs,
        "eta": eta_rows(session, run_id) if active else [],
        "by_kind": jobs_by_kind(session, run_id) if active else {},
        "lenses": lens_states(session, run_id),  # waiting, not applicable, ... per lens
    }


def jobs_by_kind(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """Per kind: jobs per state and the mean progress of the running ones (the plot cards
    say what is running while their results are still missing)."""
    out: dict[str, dict[str, Any]] = {}
    rows = session.execute(
        select(Job.kind, Job.state, func.count(), func.avg(Job.progress))
        .where(Job.run_id == run_id)
        .group_by(Job.kind, Job.state)
    ).all()
    for kind, state, n, progress in rows:
        entry = out.setdefault(kind, {"queued": 0, "running": 0, "done": 0, "failed": 0})
        entry[state] = int(n)
        if state == "running":
            entry["progress"] = float(progress or 0.0)
    return out


def eta_rows(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Time to completion per kind, from the stored measured throughput (jobs.throughput)."""
    from phaseboard.server.jobs.throughput import eta_by_kind, format_eta

    return [
        {
            "kind": kind,
            "jobs": e["jobs"],
            "text": format_eta(e["seconds"]),
            "seconds": e["seconds"],
            "rate": e["rate"],
        }
        for kind, e in eta_by_kind(session, run_id).items()
    ]
