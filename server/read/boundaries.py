"""A run's stage boundaries as the plots, the lens views and ``/api/.../phases`` show them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.models import PhaseBoundary


def boundaries(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Every boundary of the run, detected and manual, by step."""
    rows = session.scalars(
        select(PhaseBoundary)
        .where(PhaseBoundary.run_id == run_id)
        .order_by(PhaseBoundary.step, PhaseBoundary.id)
    ).all()
    return [boundary_dict(b) for b in rows]


def boundary_dict(b: PhaseBoundary) -> dict[str, Any]:
    return {
        "id": b.id,
        "run_id": b.run_id,
        "step": b.step,
        "source": b.source,
        "kind": b.kind,
        "score": b.score,
        "label": b.label,
        "manual": b.manual,
    }
