"""Scheduling by cost: cheap kinds never wait behind expensive ones.

A job kind is *fast* when it needs at most a few forward passes (metrics, phases, essential
dynamics, test no-ops); everything that runs SGLD chains is *heavy*. Two mechanisms use it:

- claiming from SQL (``lifecycle.queued_ids``) takes fast jobs first, oldest first within a
  class, so a phases job queued after thirty LLC jobs runs next, not last;
- lanes: the local pool keeps ``settings.local_fast_workers`` threads that take only fast
  jobs (so one is free even while every other thread is inside a long LLC batch), and Celery
  sends fast kinds to their own queue ``pb.fast`` (``phaseboard worker --lane fast``).

Heavy kinds batch several checkpoints of one run and config into one vectorised job.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from phaseboard.server.models import Job

FAST_KINDS = ("metrics", "phases", "essential_dynamics", "learning_order", "noop")
# Kinds whose queued jobs (same run, config and device) are claimed together as one batch.
BATCH_KINDS = ("llc", "llc_restricted")
LANES = ("all", "fast", "heavy")


def is_fast(kind: str) -> bool:
    return kind in FAST_KINDS


def claim_order() -> list[Any]:
    """ORDER BY for claiming: fast kinds first, then oldest first."""
    return [sa.case((Job.kind.in_(FAST_KINDS), 0), else_=1), Job.id]


def lane_filter(lane: str) -> Any:
    """WHERE clause restricting a worker of ``lane`` to the kinds it takes."""
    if lane == "fast":
        return Job.kind.in_(FAST_KINDS)
    if lane == "heavy":
        return Job.kind.not_in(FAST_KINDS)
    return sa.true()
