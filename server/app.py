"""``create_app(settings)``: builds the FastAPI app; nothing happens at import time."""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from phaseboard import __version__
from phaseboard.server.api import build_api_router
from phaseboard.server.db import Database
from phaseboard.server.errors import InsufficientStorage, PhaseboardError
from phaseboard.server.jobs import make_queue
from phaseboard.server.security import install as install_security
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import open_blob_store
from phaseboard.server.task_checks import check_factory_patterns
from phaseboard.server.web import mount_web
from phaseboard.server.web.login import router as login_router

log = logging.getLogger(__name__)
_FULL = (
    "the server's storage is full (no space left on its disk or in its database); "
    "nothing was stored"
)
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _error_body(code: str, message: str) -> dict[str, object]:
    return {"error": code, "detail": message}


def _phaseboard_response(exc: PhaseboardError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(
        _error_body(exc.code, exc.message), status_code=exc.status_code, headers=headers
    )


def storage_exhausted(exc: BaseException) -> bool:
    """A full disk or quota (ENOSPC, EDQUOT, a file-size limit), SQLite's ``SQLITE_FULL`` or
    PostgreSQL's ``disk_full`` (SQLSTATE 53100), however it was wrapped."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if getattr(exc, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
            return True
        if getattr(exc, "sqlstate", None) == "53100":
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _install_error_handlers(app: FastAPI) -> None:
    """The one place where our typed errors become HTTP responses."""

    @app.exception_handler(PhaseboardError)
    async def _phaseboard_error(request: Request, exc: PhaseboardError) -> JSONResponse:
        return _phaseboard_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (unknown route, wrong method) in our body shape too."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            _error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        """A full disk is the operator's to fix, not a fault: 507; other OS errors 500."""
        if not storage_exhausted(exc):
            raise exc
        return _phaseboard_response(InsufficientStorage(_FULL))

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if not storage_exhausted(exc):
            raise exc
        return _phaseboard_response(InsufficientStorage(_FULL))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        """Anything else: a 500 in the JSON error shape (the traceback goes to the log)."""
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            _error_body("internal_error", f"the server failed ({type(exc).__name__})"),
            status_code=500,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            msg = str(err.get("msg"))
            if err.get("input", ...) is None and err.get("type") != "missing":
                msg += " (got null)"
            parts.append(f"{where}: {msg}" if where else msg)
        return JSONResponse(_error_body("bad_input", "; ".join(parts)), status_code=422)


def create_app(settings: Settings | None = None, *, start_workers: bool = True) -> FastAPI:
    """Build the app. The database must already be migrated (``phaseboard migrate``).

    ``start_workers`` starts the in-process worker pool when ``settings.queue == "local"``.
    """
    settings = settings or Settings()
    check_factory_patterns(settings)  # a PHASEBOARD_MODEL_FACTORIES that allows too much
    settings.ensure_dirs()
    db = Database(settings)
    store = open_blob_store(settings)  # PHASEBOARD_BLOB_URL: local directory or S3
    store.clean_tmp()  # temp files of uploads whose process died (a crash), whatever their age

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue = app.state.queue
        if start_workers:
            queue.start()
        try:
            yield
        finally:
            queue.stop()
            db.dispose()

    app = FastAPI(
        title="Phaseboard",
        version=__version__,
        description="Training trajectories: loss, local learning coefficients, phase boundaries.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.store = store
    app.state.queue = make_queue(settings, db, store)
    _install_error_handlers(app)
    install_security(app, settings)  # cross-site writes refused, security headers
    app.include_router(build_api_router())
    app.include_router(login_router)  # signing a browser in to a private server
    mount_web(app)
    return app
