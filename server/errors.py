"""Typed errors; ``server.app`` maps every one of them to an HTTP response in one place."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PhaseboardError(Exception):
    """Base error: ``status_code`` and a message meant for the user."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(PhaseboardError):
    status_code = 422
    code = "bad_input"


class BadCheckpoint(PhaseboardError):
    """An upload that is not a loadable, safe checkpoint (corrupt, pickle with code, ...)."""

    status_code = 422
    code = "bad_checkpoint"


class NotFound(PhaseboardError):
    status_code = 404
    code = "not_found"


class Conflict(PhaseboardError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(PhaseboardError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(PhaseboardError):
    status_code = 401
    code = "unauthorized"


class UnsupportedMediaType(PhaseboardError):
    status_code = 415
    code = "unsupported_media_type"


class StorageUnavailable(PhaseboardError):
    """The blob store (object storage) did not answer or refused; nothing was stored."""

    status_code = 503
    code = "storage_unavailable"


class InsufficientStorage(PhaseboardError):
    """The disk (or the database's) is full; what the request wrote was removed."""

    status_code = 507
    code = "insufficient_storage"


class RequestTimeout(PhaseboardError):
    """A client sent its body too slowly (``PHASEBOARD_UPLOAD_IDLE_S`` / ``_MAX_S``)."""

    status_code = 408
    code = "request_timeout"


class MisdirectedRequest(PhaseboardError):
    """A ``Host`` this server does not answer to (a DNS-rebinding page, a wrong name)."""

    status_code = 421
    code = "misdirected_request"


class ErrorOut(BaseModel):
    """The body of every error response: ``{"error": code, "detail": message}``."""

    error: str = Field(description="Machine-readable code: not_found, bad_input, conflict, ...")
    detail: str = Field(description="What was wrong, written for a person.")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("A body that cannot be read at all (not UTF-8, a broken form)."),
    401: _error("A write without the bearer token this server requires."),
    403: _error("A cross-site write from a browser (see ``server.security``)."),
    404: _error("No such run, checkpoint, job, boundary, share or route."),
    408: _error("The client sent its upload too slowly; nothing was stored."),
    409: _error("Conflicts with what is stored (duplicate name or step, job state)."),
    413: _error("Over a size limit: upload bytes, request body, metric points."),
    415: _error("Not the content type this route takes (an upload wants multipart)."),
    421: _error("A Host header this server does not answer to (PHASEBOARD_ALLOWED_HOSTS)."),
    422: _error("Bad input; the detail names the field and the problem."),
    500: _error("A fault of the server; the detail says what failed, nothing half-stored."),
    503: _error("The blob store (object storage) did not answer; nothing was stored."),
    507: _error("The server's disk or database is full; nothing was stored."),
}
"""Declared once on the API routers, so the OpenAPI spec shows what the app really sends."""
