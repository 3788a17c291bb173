"""Phase boundaries of a run: read all, add/rename/delete by hand.

Boundaries added or edited here are stored with ``manual=True``; boundary detection replaces
only the rows with ``manual=False``, so a user's boundaries survive a rerun. Renaming or moving
a detected boundary makes it manual (it is now the user's), so the edit is not lost either.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, field_validator

from phaseboard.server.db import get_existing
from phaseboard.server.deps import RunDep, SessionDep, WriteAuth
from phaseboard.server.errors import BadInput
from phaseboard.server.models import PhaseBoundary
from phaseboard.server.read import boundaries, boundary_dict
from phaseboard.server.schemas import DbId, Text

router = APIRouter(tags=["phases"])


class BoundaryOut(BaseModel):
    id: int
    run_id: int
    step: float
    source: str
    kind: str
    score: float
    label: str
    manual: bool


class BoundaryIn(BaseModel):
    step: float = Field(ge=0, description="Training step of the boundary.")
    label: Text = Field(default="", max_length=200)

    @field_validator("step")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("step must be a finite number")
        return v


class BoundaryPatch(BaseModel):
    step: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    label: Text | None = Field(default=None, max_length=200)


def _boundary(session: SessionDep, boundary_id: DbId) -> PhaseBoundary:
    return get_existing(session, PhaseBoundary, boundary_id, "phase boundary")


@router.get("/runs/{run_id}/phases", response_model=list[BoundaryOut])
def list_phases(run: RunDep, session: SessionDep) -> list[dict[str, Any]]:
    return boundaries(session, run.id)


@router.post(
    "/runs/{run_id}/phases",
    response_model=BoundaryOut,
    status_code=201,
    dependencies=[WriteAuth],
)
def add_phase(run: RunDep, body: BoundaryIn, session: SessionDep) -> dict[str, Any]:
    row = PhaseBoundary(
        run_id=run.id,
        step=body.step,
        source="manual",
        kind="manual",
        score=0.0,
        label=body.label.strip(),
        manual=True,
    )
    session.add(row)
    session.flush()
    return boundary_dict(row)


@router.patch("/phases/{boundary_id}", response_model=BoundaryOut, dependencies=[WriteAuth])
def edit_phase(boundary_id: DbId, body: BoundaryPatch, session: SessionDep) -> dict[str, Any]:
    row = _boundary(session, boundary_id)
    if body.step is None and body.label is None:
        raise BadInput("nothing to change: give 'label' and/or 'step'")
    if body.step is not None:
        row.step = body.step
    if body.label is not None:
        row.label = body.label.strip()
    row.manual = True
    session.flush()
    return boundary_dict(row)


@router.delete("/phases/{boundary_id}", status_code=204, dependencies=[WriteAuth])
def delete_phase(boundary_id: DbId, session: SessionDep) -> Response:
    session.delete(_boundary(session, boundary_id))
    return Response(status_code=204)
