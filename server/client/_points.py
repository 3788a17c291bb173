"""Metric points on the wire: names the server accepts, batches split around bad points, errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from ._client import Phaseboard

_MAX_NAME = 200
# Refusals that are about the run or the caller, not about the points in the batch.
_NOT_THE_POINTS = {401, 403, 404, 405}


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"loss": 1}}`` -> ``{"train/loss": 1}`` (nested mappings joined with ``/``)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f"{name}/"))
        else:
            out[name] = value
    return out


def _bad_name(name: str) -> str | None:
    """Why the server would refuse this metric name, or None."""
    if not name.strip():
        return "empty name"
    if len(name) > _MAX_NAME:
        return f"name longer than {_MAX_NAME} characters"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "control character (e.g. NUL) in the name"
    return None


def post_points(client: Phaseboard, run_id: int, points: list[dict[str, Any]]) -> list[str]:
    """POST points; a 4xx about the points splits the batch until the bad ones are found.

    Returns a description of each dropped point (the caller warns). Network errors, 5xx after
    retries and refusals of the run itself (401/403/404) raise ``PhaseboardClientError``.
    A 4xx is never retried.
    """
    if not points:
        return []
    try:
        client.request("POST", f"/api/runs/{run_id}/metrics", json=points)
        return []
    except PhaseboardClientError as exc:
        if exc.status_code is None or exc.status_code >= 500 or exc.status_code in _NOT_THE_POINTS:
            raise
        if len(points) == 1:
            p = points[0]
            return [f"{p.get('name')!r} at step {p.get('step')}: {exc.short}"]
    mid = len(points) // 2
    return post_points(client, run_id, points[:mid]) + post_points(client, run_id, points[mid:])


class PhaseboardClientError(Exception):
    """The server refused a request (``status_code``, ``code``) or could not be reached."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.detail = detail if detail is not None else message  # the server's own words

    @property
    def short(self) -> str:
        """``code: detail`` for tables and one-line reports."""
        return f"{self.code}: {self.detail}" if self.code else self.detail


def _error_from_response(resp: httpx.Response, what: str) -> PhaseboardClientError:
    code, detail = None, resp.text[:500]
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error")
        raw = body.get("detail", detail)
        detail = raw if isinstance(raw, str) else str(raw)
    return PhaseboardClientError(
        f"{what}: HTTP {resp.status_code} {code or ''}: {detail}".replace("  ", " "),
        status_code=resp.status_code,
        code=code,
        detail=detail,
    )
