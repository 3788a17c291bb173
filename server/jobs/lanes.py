"""Scheduling by cost: cheap lenses never wait behind expensive ones.

Each lens declares its lane in the lens registry (``Lens.lane``): *fast* when it needs at
most a few forward passes (metrics, phases, essential dynamics, learning order), *heavy*
when it runs SGLD chains. Two mechanisms use it:

- claiming from SQL (``lifecycle.queued_ids``) takes fast jobs first, oldest first within a
  class, so a phases job queued after thirty LLC jobs runs next, not last;
- lanes: the local pool keeps ``settings.local_fast_workers`` threads that take only fast
  jobs (so one is free even while every other thread is inside a long LLC batch), and Celery
  sends fast lenses to their own queue ``pb.fast`` (``phaseboard worker --lane fast``).

Lenses with a batch handler (``Lens.batch_handler``) batch several checkpoints of one run
and config into one vectorised job.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from phaseboard.server.lenses._registry import batched_lens_names, fast_lens_names, find_lens
from phaseboard.server.models import Job

LANES = ("all", "fast", "heavy")


def is_fast(kind: str) -> bool:
    lens = find_lens(kind)
    return lens is not None and lens.lane == "fast"


def is_batched(kind: str) -> bool:
    """Whether queued jobs of this lens (same run, config and device) are claimed together."""
    return kind in batched_lens_names()


def claim_order() -> list[Any]:
    """ORDER BY for claiming: fast lenses first, then oldest first."""
    return [sa.case((Job.kind.in_(fast_lens_names()), 0), else_=1), Job.id]


def lane_filter(lane: str) -> Any:
    """WHERE clause restricting a worker of ``lane`` to the lenses it takes."""
    if lane == "fast":
        return Job.kind.in_(fast_lens_names())
    if lane == "heavy":
        return Job.kind.not_in(fast_lens_names())
    return sa.true()
