"""Lens results of a run in one read: essential dynamics (and later lenses) + boundaries.

Run-level lenses store one result row per rerun; pages want the newest one only, so this
reads just that row instead of the whole history ``/runs/{id}/results`` returns.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter

from server.api.deps import SessionDep
from server.db import get_existing
from server.models import Result, Run
from server.web.queries import boundaries

router = APIRouter(tags=["lenses"])

RUN_LENSES = ("essential_dynamics",)


def newest_result(session: SessionDep, run_id: int, kind: str) -> dict[str, Any] | None:
    """Values of the newest result of ``kind`` for the run, with its step and id."""
    row = session.execute(
        sa.select(Result.id, Result.values)
        .where(Result.run_id == run_id, Result.kind == kind)
        .order_by(Result.id.desc())
        .limit(1)
    ).first()
    return None if row is None else {"result_id": row[0], **row[1]}


def progress_series(session: SessionDep, run_id: int) -> dict[str, dict[str, list[float]]]:
    """``progress/<name>`` scalars of the run's metrics results as series, by step."""
    out: dict[str, dict[str, list[float]]] = {}
    rows = session.execute(
        sa.select(Result.step, Result.values)
        .where(Result.run_id == run_id, Result.kind == "metrics", Result.step.is_not(None))
        .order_by(Result.step, Result.id)
    )
    latest: dict[str, dict[int, float]] = {}
    for step, values in rows:  # newest result per step wins
        for key, value in (values or {}).items():
            if key.startswith("progress/") and isinstance(value, int | float):
                latest.setdefault(key.removeprefix("progress/"), {})[int(step)] = float(value)
    for name, points in sorted(latest.items()):
        steps = sorted(points)
        out[name] = {"step": steps, "value": [points[k] for k in steps]}
    return out


@router.get("/runs/{run_id}/lenses")
def run_lenses(run_id: int, session: SessionDep) -> dict[str, Any]:
    """``{"run_id", "<lens>": newest values or null, ..., "progress": {name: series},
    "boundaries": [...]}``."""
    get_existing(session, Run, run_id, "run")
    out: dict[str, Any] = {"run_id": run_id}
    for kind in RUN_LENSES:
        out[kind] = newest_result(session, run_id, kind)
    out["progress"] = progress_series(session, run_id)
    out["boundaries"] = boundaries(session, run_id)
    return out
