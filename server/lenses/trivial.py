"""Two trivial lenses for tests and benchmarks (``internal``: never automatic, not on
pages): ``noop`` finishes at once with an empty result, ``sleep`` sleeps ``seconds`` in
small steps, reporting progress (cancel, crash and queue tests)."""

from __future__ import annotations

import time
from typing import Any

from phaseboard.server.jobs.handlers import JobContext, ResultRows
from phaseboard.server.jobs.planning import PlanContext
from phaseboard.server.lenses._registry import Lens


def noop_config(plan: PlanContext) -> dict[str, Any]:
    return {"nonce": plan.override.get("nonce")}


def sleep_config(plan: PlanContext) -> dict[str, Any]:
    return {
        "seconds": float(plan.override.get("seconds", 1.0)),
        "nonce": plan.override.get("nonce"),
    }


def run_noop(ctx: JobContext) -> ResultRows:
    return [{"restriction": "", "values": {}}]


def run_sleep(ctx: JobContext) -> ResultRows:
    total = float(ctx.config.get("seconds", 1.0))
    n = max(1, int(total / 0.05))
    for i in range(n):
        time.sleep(total / n)
        ctx.progress(i + 1, n, f"slept {i + 1}/{n}")
    return [{"restriction": "", "values": {"seconds": total}}]


LENSES = (
    Lens(
        name="noop",
        title="no-op",
        scope="run",
        handler=run_noop,
        config=noop_config,
        lane="fast",
        min_checkpoints=0,
        needs_task=False,
        internal=True,
    ),
    Lens(
        name="sleep",
        title="sleep",
        scope="run",
        handler=run_sleep,
        config=sleep_config,
        lane="heavy",
        min_checkpoints=0,
        needs_task=False,
        internal=True,
    ),
)
