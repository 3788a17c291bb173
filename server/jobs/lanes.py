"""Scheduling by cost: cheap lenses never wait behind expensive ones.

A lens's lane is *fast* (a few forward passes) or *heavy* (SGLD chains). Each lens declares
one in the lens registry (``Lens.lane``), but what a job costs depends on the model and the
machine (a metrics job on a language model can take minutes), so a lens declared fast goes
to the heavy lane once its **measured** cost says so: the median wall time of its
``RECENT_JOBS`` newest finished jobs on the database (``refresh``, every ``REFRESH_S``) over
``HEAVY_ABOVE_S``. A heavy lens stays heavy however quick (its batches are what the fast
lane must not wait behind). Two mechanisms use the lanes:

- claiming from SQL (``lifecycle.queued_ids``) takes fast jobs first, oldest first within a
  class, so a phases job queued after thirty LLC jobs runs next, not last;
- lanes: the local pool keeps ``settings.local_fast_workers`` threads that take only fast
  jobs (so one is free even while every other thread is inside a long LLC batch), and Celery
  sends fast lenses to their own queue ``pb.fast`` (``phaseboard worker --lane fast``).

Lenses with a batch handler (``Lens.batch_handler``) batch several checkpoints of one run
and config into one vectorised job.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import sqlalchemy as sa

from phaseboard.server.lenses._registry import all_lenses, batched_lens_names, find_lens
from phaseboard.server.models import Job

LANES = ("all", "fast", "heavy")
HEAVY_ABOVE_S = 30.0  # a declared-fast lens whose jobs take a median over this is heavy
RECENT_JOBS = 20  # finished jobs per lens the median is taken over
REFRESH_S = 15.0  # how often ``refresh`` reads the jobs table again

_lock = threading.Lock()
_measured: dict[str, dict[str, float]] = {}  # database url -> lens -> median seconds
_refreshed: dict[str, float] = {}  # database url -> monotonic time of the last refresh


def _key(db: Any) -> str:
    return str(db.engine.url)


def measured_seconds(db: Any) -> dict[str, float]:
    """Median wall seconds of each lens's ``RECENT_JOBS`` newest finished jobs."""
    durations: dict[str, list[float]] = {}
    with db.session() as s:
        newest = (
            sa.select(
                Job.kind,
                Job.started_at,
                Job.finished_at,
                sa.func.row_number().over(partition_by=Job.kind, order_by=Job.id.desc()).label("k"),
            )
            .where(
                Job.state == "done",
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .subquery()
        )
        rows = s.execute(
            sa.select(newest.c.kind, newest.c.started_at, newest.c.finished_at).where(
                newest.c.k <= RECENT_JOBS
            )
        )
        for kind, started, finished in rows:
            durations.setdefault(kind, []).append((finished - started).total_seconds())
    return {kind: statistics.median(d) for kind, d in durations.items() if d}


def refresh(db: Any, force: bool = False) -> None:
    """Re-read the measured costs on ``db`` (at most every ``REFRESH_S``)."""
    key, now = _key(db), time.monotonic()
    with _lock:
        if not force and now - _refreshed.get(key, -1e9) < REFRESH_S:
            return
        _refreshed[key] = now
    measured = measured_seconds(db)
    with _lock:
        _measured[key] = measured


def lane_of(kind: str, db: Any = None) -> str:
    """``fast`` or ``heavy``: declared, or heavy where ``db``'s measurements say so."""
    lens = find_lens(kind)
    declared = lens.lane if lens is not None else "heavy"
    if declared != "fast" or db is None:
        return declared
    with _lock:
        seconds = _measured.get(_key(db), {}).get(kind)
    return "heavy" if seconds is not None and seconds > HEAVY_ABOVE_S else "fast"


def fast_kinds(db: Any = None) -> list[str]:
    """The lenses in the fast lane (on ``db``'s measurements, if given)."""
    return [lens.name for lens in all_lenses() if lane_of(lens.name, db) == "fast"]


def is_fast(kind: str, db: Any = None) -> bool:
    return lane_of(kind, db) == "fast"


def is_batched(kind: str) -> bool:
    """Whether queued jobs of this lens (same run, config and device) are claimed together."""
    return kind in batched_lens_names()


def claim_order(db: Any = None) -> list[Any]:
    """ORDER BY for claiming: fast lenses first, then oldest first."""
    return [sa.case((Job.kind.in_(fast_kinds(db)), 0), else_=1), Job.id]


def lane_filter(lane: str, db: Any = None) -> Any:
    """WHERE clause restricting a worker of ``lane`` to the lenses it takes."""
    if lane == "fast":
        return Job.kind.in_(fast_kinds(db))
    if lane == "heavy":
        return Job.kind.not_in(fast_kinds(db))
    return sa.true()
