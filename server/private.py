"""Private mode (``PHASEBOARD_PRIVATE=true``): reads need the API token too.

A script sends ``Authorization: Bearer <token>`` as for writes. A browser signs in once at
``/login`` (a form posting the token); the answer sets a cookie holding an HMAC of the token
(never the token itself), ``HttpOnly`` and ``SameSite=Lax``, that authorises reads only
(``GET``/``HEAD``): writes still need the bearer header, so a cross-site form can change
nothing, and the cross-site guard (``server.security``) refuses a cross-site login. A new
token invalidates every cookie.

Share links stay capability URLs: ``/s/{slug}`` is readable without the token, and visiting
it records the slug in a cookie, so the page's own data requests (plot data, lens results,
the jobs panel) are answered for the runs that view shows and nothing else of the server
(``share_allows``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from sqlalchemy import select
from starlette.datastructures import Headers

from phaseboard.server.db import Database
from phaseboard.server.models import Result, Run, Share

__all__ = [
    "READ_COOKIE",
    "SHARE_COOKIE",
    "is_public",
    "is_slug",
    "read_cookie_value",
    "remember_share",
    "share_allows",
    "shared_slugs",
]

READ_COOKIE = "phaseboard_read"
SHARE_COOKIE = "phaseboard_shares"
MAX_SHARES = 20  # slugs remembered per browser
_PUBLIC = frozenset({"/api/health", "/favicon.ico", "/login", "/logout"})
_SLUG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Reads a shared view's page makes, by the run they are about.
_RUN_READS = [
    re.compile(r"^/api/runs/(\d+)/(plotdata|lenses|calibration|learning_order/heatmap)$"),
    re.compile(r"^/runs/(\d+)/(jobs|checkpoints)$"),  # htmx partials of the run page
]
_GROUP_READS = frozenset(
    {"/api/groups/bands", "/api/groups/paths", "/api/learning_order/agreement"}
)
_RESULT = re.compile(r"^/api/results/(\d+)$")


def is_public(path: str) -> bool:
    """Paths anyone may read in private mode: health, static assets, the login form, and
    share pages (``/s/{slug}``, a capability)."""
    return path in _PUBLIC or path.startswith("/static/") or path.startswith("/s/")


def read_cookie_value(token: str) -> str:
    """What the read cookie holds for ``token``: an HMAC, so the cookie is not the token."""
    key = token.encode("utf-8", "surrogateescape")
    return hmac.new(key, b"phaseboard read cookie v1", hashlib.sha256).hexdigest()


def _cookies(headers: Headers) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            found.setdefault(name, value)
    return found


def has_read_cookie(headers: Headers, token: str) -> bool:
    given = _cookies(headers).get(READ_COOKIE, "")
    return hmac.compare_digest(given.encode(), read_cookie_value(token).encode())


def is_slug(text: str) -> bool:
    return bool(_SLUG.match(text))


def shared_slugs(headers: Headers) -> list[str]:
    """Share slugs this browser visited (the share cookie), newest first."""
    raw = _cookies(headers).get(SHARE_COOKIE, "")
    return [s for s in raw.split(".") if _SLUG.match(s)][:MAX_SHARES]


def remember_share(headers: Headers, slug: str) -> str:
    """The share cookie's new value once ``slug`` was visited."""
    slugs = [slug, *(s for s in shared_slugs(headers) if s != slug)]
    return ".".join(slugs[:MAX_SHARES])


def _view_runs(db: Database, slugs: Iterable[str]) -> set[int]:
    """Ids of the runs the shared views show (a compare view by ids and by tag, as its page
    computes them when read)."""
    from phaseboard.server.read.views import parse_view

    ids: set[int] = set()
    with db.session() as session:
        views = session.scalars(select(Share.view).where(Share.slug.in_(list(slugs)))).all()
        for raw in views:
            view = parse_view(raw)
            if view.run_id is not None:
                ids.add(view.run_id)
            elif view.page == "compare":
                params = view.params
                ids |= _ints(params.get("runs", ""))
                tag = params.get("tag", "")
                if tag:
                    for rid, tags in session.execute(select(Run.id, Run.tags)):
                        if tag in (tags or []):
                            ids.add(rid)
    return ids


def _ints(text: str) -> set[int]:
    return {int(p) for p in text.split(",") if p.strip().isascii() and p.strip().isdigit()}


def _only(params: list[tuple[str, str]], key: str, runs: set[int]) -> bool:
    """``key`` given once, as comma-separated ids (nothing else), all among ``runs``."""
    values = [v for k, v in params if k == key]
    if len(values) != 1:
        return False
    parts = [p.strip() for p in values[0].split(",")]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        return False
    return {int(p) for p in parts} <= runs


def share_allows(db: Database, slugs: list[str], path: str, query: str) -> bool:
    """Whether a read of ``path?query`` is one the shared views' pages make."""
    if not slugs:
        return False
    runs = _view_runs(db, slugs)
    if not runs:
        return False
    for pattern in _RUN_READS:
        m = pattern.match(path)
        if m:
            return int(m.group(1)) in runs
    params = parse_qsl(query, keep_blank_values=True)
    if path in _GROUP_READS:
        return _only(params, "runs", runs)
    if path == "/api/jobs":
        return _only(params, "run_id", runs)
    m = _RESULT.match(path)
    if m:
        with db.session() as session:
            owner = session.scalar(select(Result.run_id).where(Result.id == int(m.group(1))))
        return owner in runs
    return False
