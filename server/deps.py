"""Request dependencies shared by the JSON routes (``server.api``) and the pages
(``server.web``), declared once as ``Annotated`` aliases: the settings, the database, a
session, the run a path names (or 404), and the write check."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from phaseboard.server.db import Database
from phaseboard.server.errors import Unauthorized
from phaseboard.server.models import Run
from phaseboard.server.read import get_run
from phaseboard.server.schemas import DbId
from phaseboard.server.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as session:
        yield session


def require_write(request: Request) -> None:
    """When ``API_TOKEN`` is set, writes need ``Authorization: Bearer <token>``."""
    token = request.app.state.settings.api_token
    if not token:
        return
    if not has_token(request):
        raise Unauthorized("this server requires 'Authorization: Bearer <token>' for writes")


def has_token(request: Request) -> bool:
    """The request carries the configured bearer token (False when none is configured).

    Compared as bytes: ``hmac.compare_digest`` refuses non-ASCII ``str`` (a 500 otherwise).
    """
    token = request.app.state.settings.api_token
    if not token:
        return False
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[Session, Depends(get_session)]
WriteAuth = Depends(require_write)


def run_in_path(run_id: DbId, session: SessionDep) -> Run:
    """The run ``{run_id}`` in the path names, or 404 (``NotFound``)."""
    return get_run(session, run_id)


RunDep = Annotated[Run, Depends(run_in_path)]
