"""Stored lens results read back: the newest result of a lens, and the per-checkpoint scalars
of the ``metrics`` lens as series (the plots, the lens views and the group bands read these)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.models import Result


def scalar_values(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a metrics result to ``{name: float}`` (nested dicts become ``a.b``)."""
    out: dict[str, float] = {}
    for key, value in (values or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(scalar_values(value, prefix=f"{name}."))
    return out


def newest_result(session: Session, run_id: int, kind: str) -> dict[str, Any] | None:
    """Values of the newest result of ``kind`` for the run, with its id as ``result_id``."""
    row = session.execute(
        select(Result.id, Result.values)
        .where(Result.run_id == run_id, Result.kind == kind)
        .order_by(Result.id.desc())
        .limit(1)
    ).first()
    return None if row is None else {"result_id": row[0], **row[1]}


def metric_points(session: Session, run_id: int) -> dict[str, dict[int, float]]:
    """Every scalar of the run's ``metrics`` results (``scalar_values`` names, progress
    measures as ``progress/<name>``) as ``{name: {step: value}}``, steps ascending; where a
    checkpoint was measured more than once, its newest result wins."""
    out: dict[str, dict[int, float]] = {}
    rows = session.execute(
        select(Result.step, Result.values)
        .where(Result.run_id == run_id, Result.kind == "metrics", Result.step.is_not(None))
        .order_by(Result.step, Result.id)
    )
    for step, values in rows:
        for key, value in scalar_values(values).items():
            out.setdefault(key, {})[int(step)] = value
    return out


def progress_series(session: Session, run_id: int) -> dict[str, dict[str, list[float]]]:
    """The task's progress measures (``progress/<name>`` scalars of the metrics results) as
    ``{name: {"step": [...], "value": [...]}}``, by name."""
    out: dict[str, dict[str, list[float]]] = {}
    for key, points in sorted(metric_points(session, run_id).items()):
        if key.startswith("progress/"):
            steps = sorted(points)
            out[key.removeprefix("progress/")] = {
                "step": steps,
                "value": [points[s] for s in steps],
            }
    return out
