"""Measured SGLD throughput and the jobs panel's time-to-completion estimate.

When a batch of LLC jobs finishes, the runner stores on each job the chain-steps it needed
(rows x SGLD steps, summed over its results) and the batch's measured chain-steps per second.
The estimate for a kind is then plain arithmetic on stored numbers: the chain-steps still to
do (queued jobs count as the recent finished ones of that kind, running ones by their
progress) divided by the recent measured rate. Nothing is timed or computed by a page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.models import Job

RECENT = 8  # finished jobs per kind that the rate and size estimates average over


def chain_steps(results: Iterable[Mapping[str, Any]]) -> float | None:
    """Chain-steps of a job from its LLC result rows (None for kinds without chains)."""
    total = 0.0
    for row in results:
        values = row.get("values") or {}
        cfg = values.get("config") or {}
        per_chain = values.get("per_chain")
        if not isinstance(per_chain, list) or "num_draws" not in cfg:
            continue
        steps = int(cfg.get("num_burnin_steps", 0)) + int(cfg["num_draws"]) * int(
            cfg.get("num_steps_bw_draws", 1)
        )
        total += len(per_chain) * steps
    return total or None


def eta_by_kind(session: Session, run_id: int) -> dict[str, dict[str, Any]]:
    """Per kind with active jobs: ``{"seconds", "jobs", "rate"}`` (seconds None while no
    job of that kind has finished with a measured rate yet)."""
    active = session.execute(
        sa.select(Job.kind, Job.progress).where(
            Job.run_id == run_id, Job.state.in_(("queued", "running"))
        )
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({k for k, _ in active}):
        recent = session.execute(
            sa.select(Job.chain_steps, Job.chain_steps_per_s)
            .where(
                Job.run_id == run_id,
                Job.kind == kind,
                Job.state == "done",
                Job.chain_steps_per_s.is_not(None),
            )
            .order_by(Job.finished_at.desc(), Job.id.desc())
            .limit(RECENT)
        ).all()
        left = [1.0 - max(0.0, min(1.0, p or 0.0)) for k, p in active if k == kind]
        entry: dict[str, Any] = {"jobs": len(left), "seconds": None, "rate": None}
        if recent:
            size = sum(float(s or 0.0) for s, _ in recent) / len(recent)
            rate = sum(float(r) for _, r in recent) / len(recent)
            entry["rate"] = rate
            entry["seconds"] = sum(left) * size / rate if rate > 0 else None
        out[kind] = entry
    return out


def format_eta(seconds: float | None) -> str:
    """``~40 s`` / ``~3 min`` / ``~1.5 h``; "estimating" before any rate is measured."""
    if seconds is None:
        return "estimating"
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"
