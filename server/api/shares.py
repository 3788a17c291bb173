"""Share links: ``POST /api/shares`` freezes a page view under a short random slug.

The view must be a local page path with its query (``/runs/3?x=log&smooth=0.6``); absolute
or external URLs are refused (``server.web.views.parse_view``). ``/s/{slug}`` replays it.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from phaseboard.server.deps import SessionDep, SettingsDep, WriteAuth
from phaseboard.server.errors import NotFound
from phaseboard.server.models import Share
from phaseboard.server.read import MAX_VIEW_CHARS, parse_view
from phaseboard.server.schemas import Text

router = APIRouter(prefix="/shares", tags=["shares"])

SLUG_BYTES = 6  # 8 url-safe characters, 48 random bits


class ShareIn(BaseModel):
    view: Text = Field(max_length=MAX_VIEW_CHARS, examples=["/runs/1?x=log&smooth=0.6"])


class ShareOut(BaseModel):
    slug: str
    url: str
    view: str


def _out(share: Share, settings: SettingsDep, request: Request) -> ShareOut:
    """``url`` uses ``PUBLIC_URL`` when set, else the address the request came in on."""
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    return ShareOut(slug=share.slug, url=f"{base}/s/{share.slug}", view=share.view)


@router.post("", response_model=ShareOut, status_code=201, dependencies=[WriteAuth])
def create_share(
    body: ShareIn, request: Request, session: SessionDep, settings: SettingsDep
) -> ShareOut:
    view = parse_view(body.view).view
    existing = session.scalars(select(Share).where(Share.view == view)).first()
    if existing is not None:
        return _out(existing, settings, request)  # the same view gets the same link
    while True:
        slug = secrets.token_urlsafe(SLUG_BYTES)
        if session.scalars(select(Share.id).where(Share.slug == slug)).first() is None:
            break
    share = Share(slug=slug, view=view)
    session.add(share)
    session.flush()
    return _out(share, settings, request)


@router.get("/{slug}", response_model=ShareOut)
def get_share(slug: Text, request: Request, session: SessionDep, settings: SettingsDep) -> ShareOut:
    share = session.scalars(select(Share).where(Share.slug == slug)).first()
    if share is None:
        raise NotFound(f"share link {slug!r} does not exist")
    return _out(share, settings, request)
