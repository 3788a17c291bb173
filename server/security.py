"""Browser-facing protection: cross-site writes refused, security headers on every response.

With no API token (the laptop default) any page the user visits could otherwise write into
the dashboard: ``fetch(url, {method: "POST", body: formData, mode: "no-cors"})`` is a
"simple" request that browsers send cross-site without asking. A write is therefore refused
(403) when the browser marks it as cross-site (``Sec-Fetch-Site: cross-site``/``same-site``,
or an ``Origin`` that is not this server) unless it carries a header that a simple request
cannot set: ``Authorization``, ``X-Phaseboard`` (our scripts) or ``HX-Request`` (htmx).
Such headers make the browser ask first (a CORS preflight), which this server never grants,
so only same-origin pages and non-browser clients (no ``Origin``, no ``Sec-Fetch-*``: the
Python client, curl) can send them.

JSON and form bodies are also capped in bytes before anything parses them
(``settings.max_json_mb``); multipart uploads stream to disk under their own limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from phaseboard.server.settings import Settings

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PROOF_HEADERS = ("authorization", "x-phaseboard", "hx-request")
"""Headers a cross-site simple request cannot carry (each needs a CORS preflight)."""

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        # plotly.js and htmx insert <style> elements and style attributes at run time.
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
CSP_WEBGL = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-eval'")
"""For the one page that draws a WebGL plot (the runs list's parallel coordinates): plotly's
WebGL traces compile their drawing code with ``new Function`` (regl), which a CSP without
``'unsafe-eval'`` blocks. Scripts still come from this server only."""
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def is_cross_site(scope: Scope, headers: Headers, public_url: str | None) -> bool:
    """The browser says this request comes from another site (or an opaque origin)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.lower() in ("cross-site", "same-site")
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-origin request (curl, the Python client)
    own = {f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()}
    if public_url:
        own.add(_origin_of(public_url))
    return origin.lower() not in own  # includes "null" (sandboxed frames, file: pages)


def _json_response(status: int, code: str, detail: str) -> tuple[Message, Message]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class SecurityMiddleware:
    """ASGI middleware: refuse cross-site writes, cap non-multipart bodies, add headers."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_body = int(settings.max_json_mb * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] in WRITE_METHODS:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                for message in _json_response(403, "cross_site", refusal):
                    await send(message)
                return
            if not headers.get("content-type", "").lower().startswith("multipart/"):
                receive = await self._capped(headers, receive, send)
                if receive is None:
                    return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: Headers) -> str | None:
        if not is_cross_site(scope, headers, self.settings.public_url):
            return None
        if any(headers.get(h) for h in PROOF_HEADERS):
            return None
        return (
            "cross-site write refused: a page on another site may not change this dashboard. "
            "Scripts and tools send 'X-Phaseboard: 1' or 'Authorization: Bearer <token>'."
        )

    async def _capped(self, headers: Headers, receive: Receive, send: Send) -> Receive | None:
        """Read the whole body up to the cap; None (and a 413 sent) past it."""
        too_big = (
            f"request body over {self.settings.max_json_mb:g} MB (PHASEBOARD_MAX_JSON_MB); "
            "send less per request; nothing was stored"
        )
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            for message in _json_response(413, "payload_too_large", too_big):
                await send(message)
            return None
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                for reply in _json_response(413, "payload_too_large", too_big):
                    await send(reply)
                return None
            if not message.get("more_body", False):
                break
        return _replay(chunks, receive)


def _replay(messages: Iterable[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def install(app: object, settings: Settings) -> None:
    """Register the middleware on a FastAPI/Starlette app (outermost, so it sees all)."""
    app.add_middleware(SecurityMiddleware, settings=settings)  # type: ignore[attr-defined]
