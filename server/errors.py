"""Typed errors; ``server.app`` maps every one of them to an HTTP response in one place."""

from __future__ import annotations


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
