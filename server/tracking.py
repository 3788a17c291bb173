"""Tracker state of a run: status from heartbeats, and the per-series summary.

Status is stored as the client declared it (``created``, ``running``, ``finished``,
``crashed``, ``imported``) together with the last heartbeat; a ``running`` run whose heartbeat
is older than ``Settings.run_crashed_after_s`` *reads* as ``crashed``. Computing this lazily
at read time needs no sweeper process and is the same on SQLite and PostgreSQL.

The summary is ``{series: {"last", "last_step", "min", "max"}}``, merged incrementally from
each ingested batch, so reading it never scans metric points. A point that replaces a
stored extreme with another value (a re-logged step) has its series' min and max read
again from the stored points (``server.series_store.replaced_extremes``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from phaseboard.server.models import Run

STATUSES = ("created", "running", "finished", "crashed", "imported")


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def effective_status(run: Run, crashed_after_s: float, now: datetime | None = None) -> str:
    """The status a reader sees: ``running`` turns ``crashed`` once heartbeats stop."""
    status = run.status or "created"
    if status != "running":
        return status
    now = now or datetime.now(UTC)
    beat = _aware(run.heartbeat_at) or _aware(run.created_at)
    if beat is not None and (now - beat).total_seconds() > crashed_after_s:
        return "crashed"
    return "running"


def status_clause(status: str, crashed_after_s: float) -> ColumnElement[bool]:
    """A SQL condition for runs whose *effective* status is ``status`` (bound parameters)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=crashed_after_s)
    stale = or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff)
    if status == "running":
        return and_(Run.status == "running", Run.heartbeat_at >= cutoff)
    if status == "crashed":
        return or_(Run.status == "crashed", and_(Run.status == "running", stale))
    return Run.status == status


def merge_summary(
    summary: dict[str, Any] | None, points: Iterable[tuple[str, int, float]]
) -> dict[str, Any]:
    """A new summary with ``(name, step, value)`` points folded in (inputs untouched)."""
    out = {k: dict(v) for k, v in (summary or {}).items() if isinstance(v, dict)}
    groups: dict[str, tuple[list[int], list[float]]] = {}
    for name, step, value in points:  # one pass to group, then builtins per series
        g = groups.get(name)
        if g is None:
            g = groups[name] = ([], [])
        g[0].append(step)
        g[1].append(value)
    for name, (steps, values) in groups.items():
        i = max(range(len(steps)), key=steps.__getitem__)
        lo, hi = min(values), max(values)
        s = out.get(name)
        if s is None:
            out[name] = {"last": values[i], "last_step": steps[i], "min": lo, "max": hi}
            continue
        if steps[i] >= s.get("last_step", -1):
            s["last"], s["last_step"] = values[i], steps[i]
        s["min"] = min(s.get("min", lo), lo)
        s["max"] = max(s.get("max", hi), hi)
    return out


def with_extremes(
    summary: dict[str, Any], extremes: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """``summary`` with the min and max of the series in ``extremes`` replaced."""
    out = dict(summary)
    for name, (lo, hi) in extremes.items():
        if name in out:
            out[name] = {**out[name], "min": lo, "max": hi}
    return out
