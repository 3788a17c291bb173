"""Where the client's defaults come from: the only place the client reads the environment.

``PHASEBOARD_URL`` names the server to log to and ``PHASEBOARD_API_TOKEN`` the bearer token
it wants (the same variable a server reads to require one). An argument given in code always
wins; ``token=""`` means "no token" without looking at the environment. The server reads its
own settings through ``phaseboard.server.settings``; this module is for training scripts,
which must not need the server's dependencies.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_URL", "TOKEN_VAR", "URL_VAR", "env_url", "resolve_token", "resolve_url"]

DEFAULT_URL = "http://127.0.0.1:8765"
URL_VAR = "PHASEBOARD_URL"
TOKEN_VAR = "PHASEBOARD_API_TOKEN"


def env_url() -> str | None:
    """``PHASEBOARD_URL`` when it is set and not blank, else None."""
    value = os.environ.get(URL_VAR, "").strip()
    return value or None


def resolve_url(url: str | None) -> str:
    """``url``, else ``PHASEBOARD_URL``, else the local server; without a trailing slash."""
    return (url or env_url() or DEFAULT_URL).rstrip("/")


def resolve_token(token: str | None) -> str | None:
    """``token``, else ``PHASEBOARD_API_TOKEN``; None for no token (``""`` opts out)."""
    if token is None:
        token = os.environ.get(TOKEN_VAR, "")
    return token.strip() or None
