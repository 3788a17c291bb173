"""Liveness and readiness: the database answers and the blob store is writable."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from phaseboard import __version__
from phaseboard.server.deps import SessionDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(session: SessionDep, settings: SettingsDep) -> dict[str, object]:
    session.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__, "queue": settings.queue}
