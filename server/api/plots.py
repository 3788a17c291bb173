"""Everything a run's plots draw, in one response (the run page and share links read it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from phaseboard.server import read
from phaseboard.server.deps import RunDep, SessionDep

router = APIRouter(tags=["plots"])


@router.get("/runs/{run_id}/plotdata")
def plot_data(
    run: RunDep,
    session: SessionDep,
    max_points: Annotated[int, Query(ge=10, le=20000)] = 2000,
    llc_settings: Annotated[str | None, Query(max_length=64, pattern="^[0-9a-f]*$")] = None,
) -> dict[str, Any]:
    """Series (downsampled), LLC, restricted LLCs and phase boundaries of a run, in one go.

    ``llc_settings``: which LLC settings' series (a settings hash or a unique prefix)."""
    return read.plot_data(session, run.id, max_points=max_points, llc_settings=llc_settings)
