"""Checks that catch a mislabelled series: the same weights at two steps, missing steps.

Published series are not always what their labels say: a Hub repo may serve the final
model on many ``step…`` branches, a bucket may miss a few checkpoints. Content hashes
already identify identical weights (a checkpoint's blob is named by its sha256), so the
same weights at several steps of a run are stored once and every such step but the highest
is flagged with ``duplicate_of_step`` (the highest: a mislabel serves later weights under
earlier names, never the reverse); their queued analyses are cancelled and planning skips
them unless asked. ``schedule_gaps`` names the steps missing from an otherwise regular
(linear or log-spaced) schedule.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.models import Checkpoint, Job

__all__ = ["ScheduleGaps", "duplicate_ids", "reflag_duplicates", "schedule_gaps", "series_checks"]

MAX_NAMED = 20  # missing steps named in a message; the count is always given


def reflag_duplicates(session: Session, run_id: int, sha256: str) -> list[int]:
    """Recompute ``duplicate_of_step`` for the run's checkpoints holding ``sha256``; cancel
    the queued jobs of newly flagged ones. Returns the ids flagged now (the caller commits)."""
    rows = session.execute(
        sa.select(Checkpoint.id, Checkpoint.step, Checkpoint.duplicate_of_step).where(
            Checkpoint.run_id == run_id, Checkpoint.sha256 == sha256
        )
    ).all()
    if not rows:
        return []
    top = max(step for _, step, _ in rows)
    newly: list[int] = []
    for cid, step, current in rows:
        wanted = None if step == top else top
        if wanted != current:
            session.execute(
                sa.update(Checkpoint).where(Checkpoint.id == cid).values(duplicate_of_step=wanted)
            )
            if wanted is not None and current is None:
                newly.append(cid)
    if newly:
        session.execute(
            sa.update(Job)
            .where(Job.checkpoint_id.in_(newly), Job.state == "queued")
            .values(
                state="cancelled",
                progress_msg=f"skipped: the same weights as step {top}",
            )
        )
    return newly


def duplicate_ids(session: Session, run_id: int) -> set[int]:
    """Ids of the run's checkpoints flagged as duplicates."""
    q = sa.select(Checkpoint.id).where(
        Checkpoint.run_id == run_id, Checkpoint.duplicate_of_step.is_not(None)
    )
    return set(session.scalars(q))


@dataclass(frozen=True)
class ScheduleGaps:
    """Steps missing from a regular schedule: ``every`` apart (linear) or ``ratio`` apart
    (log-spaced), with the count and the first ``MAX_NAMED`` of them."""

    kind: str  # "linear" | "log"
    every: float
    missing: list[int]
    count: int

    def describe(self) -> str:
        named = ", ".join(str(s) for s in self.missing)
        extra = self.count - len(self.missing)
        more = f" and {extra} more" if extra > 0 else ""
        schedule = (
            f"a schedule of every {self.every:g} steps"
            if self.kind == "linear"
            else f"a log-spaced schedule (x{self.every:g} per checkpoint)"
        )
        noun = "step is" if self.count == 1 else "steps are"
        return f"{self.count} {noun} missing from {schedule}: {named}{more}"


def schedule_gaps(steps: list[int], min_regular: float = 0.8) -> ScheduleGaps | None:
    """Missing steps, when most gaps between consecutive steps share one spacing.

    Linear: the most common difference ``d`` defines a grid; steps off it (Pythia's
    log-spaced 1, 2, 4, ... 512 before its every-1000 steps) are set aside; if most steps are
    on it and at least ``min_regular`` of its gaps are ``d``, grid points between the first
    and last step that hold no checkpoint are missing. Log-spaced: the same on the ratios of
    positive steps. A series with at most three steps, or no common spacing, has no gaps.
    """
    s = sorted(set(steps))
    if len(s) < 4:
        return None
    found = _linear_gaps(s, min_regular)
    if found is None:
        found = _log_gaps([x for x in s if x > 0], min_regular)
    return found


def _linear_gaps(s: list[int], min_regular: float) -> ScheduleGaps | None:
    diffs = [b - a for a, b in zip(s, s[1:], strict=False)]
    d = Counter(diffs).most_common(1)[0][0]
    if d <= 0:
        return None
    offset = next(a % d for a, g in zip(s, diffs, strict=False) if g == d)
    grid = [x for x in s if x % d == offset]  # off-grid steps (a log-spaced start) aside
    if len(grid) < max(4, len(s) / 2):
        return None
    grid_diffs = [b - a for a, b in zip(grid, grid[1:], strict=False)]
    if sum(g == d for g in grid_diffs) / len(grid_diffs) < min_regular:
        return None
    missing: list[int] = []
    count = 0
    for a, b in zip(grid, grid[1:], strict=False):
        k = (b - a) // d - 1
        count += k
        missing += [a + j * d for j in range(1, min(k, MAX_NAMED) + 1)]
    if not count:
        return None
    return ScheduleGaps("linear", d, missing[:MAX_NAMED], count)


def _log_gaps(s: list[int], min_regular: float) -> ScheduleGaps | None:
    if len(s) < 4:
        return None
    ratios = [b / a for a, b in zip(s, s[1:], strict=False)]
    r, n = Counter(round(x, 6) for x in ratios).most_common(1)[0]
    if r <= 1 or n / len(ratios) < min_regular:
        return None
    missing: list[int] = []
    for a, b in zip(s, s[1:], strict=False):
        k = math.log(b / a, r)
        if abs(k - round(k)) > 1e-6:
            return None
        missing += [round(a * r**j) for j in range(1, round(k))]
    if not missing:
        return None
    return ScheduleGaps("log", r, missing[:MAX_NAMED], len(missing))


def series_checks(session: Session, run_id: int) -> dict[str, Any]:
    """What the run page and the plots show: duplicates ``[{step, of}]`` and missing steps."""
    rows = session.execute(
        sa.select(Checkpoint.step, Checkpoint.duplicate_of_step)
        .where(Checkpoint.run_id == run_id)
        .order_by(Checkpoint.step)
    ).all()
    duplicates = [{"step": step, "of": of} for step, of in rows if of is not None]
    gaps = schedule_gaps([step for step, _ in rows])
    return {
        "duplicates": duplicates,
        "missing": None
        if gaps is None
        else {"steps": gaps.missing, "count": gaps.count, "message": gaps.describe()},
    }
