"""Browser-facing protection: foreign Hosts refused, cross-site writes refused, private reads,
security headers on every response.

Before anything else the ``Host`` header must name this server: a loopback name
(``localhost``, ``127.0.0.1``, ``::1``), the host of ``PHASEBOARD_PUBLIC_URL`` or
``PHASEBOARD_HOST``, or one listed in ``PHASEBOARD_ALLOWED_HOSTS``; anything else is a 421.
A DNS-rebinding page (``attacker.example`` resolving to 127.0.0.1) sends its own name as
``Host`` and a matching ``Origin``, which the cross-site check alone would take for this
server's own pages.

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
(``settings.max_json_mb``) and in time (``upload_idle_s`` of silence, ``upload_max_s`` in
all: 408); multipart uploads stream to disk under their own limits (``server.uploads``).

With ``PHASEBOARD_PRIVATE=true`` every request but health, static assets, the login form
and share pages needs the token (``server.private``): a bearer header, or for reads the
cookie ``/login`` sets, or a share link's capability for the reads its view makes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from phaseboard.server import private
from phaseboard.server.errors import MisdirectedRequest, RequestTimeout
from phaseboard.server.settings import Settings

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})

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


def _json_response(
    status: int, code: str, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[Message, Message]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(extra or []),
            *SECURITY_HEADERS,
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, lower-case, without its port (``[::1]:80`` -> ``::1``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Host names this server answers to; None when ``PHASEBOARD_ALLOWED_HOSTS`` is ``*``."""
    extra = settings.allowed_host_names
    if "*" in extra:
        return None
    names = set(LOOPBACK_HOSTS) | {host_name(h) for h in extra}
    for url in (settings.public_url,):
        if url:
            names.add(host_name(urlsplit(url).netloc.rsplit("@", 1)[-1]))
    if settings.host.lower() not in _ANY_ADDRESS:
        names.add(host_name(settings.host))
    return frozenset(names)


class SecurityMiddleware:
    """ASGI middleware: refuse foreign Hosts, private reads without the token and cross-site
    writes; cap non-multipart bodies in bytes and time; add the security headers."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_body = int(settings.max_json_mb * 1024 * 1024)
        self.hosts = allowed_hosts(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = host_name(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            detail = (
                f"this server does not answer to the host {host[:100]!r}; it answers to "
                f"{', '.join(sorted(self.hosts))} (add a name with PHASEBOARD_ALLOWED_HOSTS "
                "or PHASEBOARD_PUBLIC_URL)"
            )
            wrong = MisdirectedRequest(detail)
            for message in _json_response(wrong.status_code, wrong.code, detail):
                await send(message)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.settings.private:
            refusal = await self._private_refusal(scope, headers)
            if refusal is not None:
                for message in refusal:
                    await send(message)
                return
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

        share_cookie = self._share_cookie(scope, headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if share_cookie is not None and message["status"] == 200:
                    extra.append((b"set-cookie", share_cookie))
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

    def _share_cookie(self, scope: Scope, headers: Headers) -> bytes | None:
        """In private mode, a share page's answer remembers its slug (``server.private``), so
        the page's own data requests are answered."""
        path = scope["path"]
        if not self.settings.private or scope["method"] != "GET" or not path.startswith("/s/"):
            return None
        slug = path.removeprefix("/s/")
        if not private.is_slug(slug):
            return None
        value = private.remember_share(headers, slug)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        return (f"{private.SHARE_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax{secure}").encode()

    async def _private_refusal(self, scope: Scope, headers: Headers) -> tuple[Message, ...] | None:
        """In private mode: None when the request may go on, else the refusal to send."""
        path, method = scope["path"], scope["method"]
        token = self.settings.api_token or ""
        if private.is_public(path) or _bearer_matches(headers, token):
            return None
        if method in ("GET", "HEAD"):
            if private.has_read_cookie(headers, token):
                return None
            slugs = private.shared_slugs(headers)
            query = scope.get("query_string", b"").decode("latin-1")
            db = scope["app"].state.db
            if slugs and await run_in_threadpool(private.share_allows, db, slugs, path, query):
                return None
            if not path.startswith("/api/") and path != "/openapi.json":  # a page: sign in
                target = path + (f"?{query}" if query else "")
                location = f"/login?next={quote(target, safe='')}".encode()
                start: Message = {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", location), (b"content-length", b"0")]
                    + SECURITY_HEADERS,
                }
                return start, {"type": "http.response.body", "body": b""}
        return _json_response(
            401,
            "unauthorized",
            "this server is private: send 'Authorization: Bearer <token>' (a browser signs "
            "in at /login)",
            [(b"www-authenticate", b"Bearer")],
        )

    async def _capped(self, headers: Headers, receive: Receive, send: Send) -> Receive | None:
        """Read the whole body up to the cap and the time limits; None (and a 413 or a 408
        sent) past them."""
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
        loop = asyncio.get_running_loop()
        idle_s, max_s = self.settings.upload_idle_s, self.settings.upload_max_s
        deadline = loop.time() + max_s
        while True:
            try:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), timeout=min(idle_s, left))
            except TimeoutError:
                slow = (
                    f"the request body took longer than {max_s:g} s (PHASEBOARD_UPLOAD_MAX_S)"
                    if loop.time() >= deadline
                    else f"the client sent nothing for {idle_s:g} s (PHASEBOARD_UPLOAD_IDLE_S)"
                )
                late = RequestTimeout(f"{slow}; nothing was stored")
                for reply in _json_response(late.status_code, late.code, late.message):
                    await send(reply)
                return None
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


def _bearer_matches(headers: Headers, token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"),
            token.encode("utf-8", "surrogateescape"),
        )
    )


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
