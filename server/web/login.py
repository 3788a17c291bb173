"""Signing a browser in to a private server (``PHASEBOARD_PRIVATE=true``): ``/login``.

``GET /login`` shows a token form; ``POST /login`` checks the token and answers with the
read cookie (``server.private``) and a redirect to the page asked for; ``POST /logout``
clears it. The form posts to this origin only: the cross-site guard (``server.security``)
refuses a login posted from another site.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from phaseboard.server.private import READ_COOKIE, read_cookie_value
from phaseboard.server.schemas import Text
from phaseboard.server.web.templating import make_templates

router = APIRouter(include_in_schema=False)
templates = make_templates()
COOKIE_DAYS = 30


def _local_target(target: str) -> str:
    """Where to go after signing in: a path of this server, never another site."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 0x20 for ch in target):
        return "/"
    return target


def _form(request: Request, target: str, error: str = "", status: int = 200) -> HTMLResponse:
    context = {
        "auth_required": False,
        "readonly": True,
        "share": None,
        "next": _local_target(target),
        "error": error,
    }
    return templates.TemplateResponse(request, "login.html", context, status_code=status)


@router.get("/login", response_class=HTMLResponse, response_model=None)
def login_form(request: Request, next: str = "/") -> Response:
    if not request.app.state.settings.private:
        return RedirectResponse("/", status_code=303)  # reads are open: nothing to sign in to
    return _form(request, next)


@router.post("/login", response_class=HTMLResponse, response_model=None)
def login(
    request: Request,
    token: Annotated[Text, Form(max_length=4096)] = "",
    next: Annotated[Text, Form(max_length=4000)] = "/",
) -> Response:
    settings = request.app.state.settings
    expected = settings.api_token or ""
    if not settings.private:
        return RedirectResponse("/", status_code=303)
    ok = hmac.compare_digest(
        token.strip().encode("utf-8", "surrogateescape"),
        expected.encode("utf-8", "surrogateescape"),
    )
    if not ok:
        return _form(request, next, "That is not this server's token.", status=401)
    response = RedirectResponse(_local_target(next), status_code=303)
    response.set_cookie(
        READ_COOKIE,
        read_cookie_value(expected),
        max_age=COOKIE_DAYS * 86400,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", response_model=None)
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(READ_COOKIE, path="/")
    return response
