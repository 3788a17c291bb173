"""The loop every local worker runs, as a thread of the server or in a child process.

Poll SQL for queued jobs of the worker's lane, run one (with its batch companions, see
``JobRunner.run_job``), now and then requeue jobs whose worker went silent and start the
automatic calibrations of runs that settled (``auto_calibration.settle``), and sleep until
woken by an ``enqueue`` or ``POLL_S`` passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.auto_calibration import settle
from phaseboard.server.jobs.runner import JobRunner

log = logging.getLogger("phaseboard.jobs")
POLL_S = 1.0


class Wake(Protocol):
    """A ``threading.Event`` or a ``multiprocessing`` one (set by ``enqueue``, or to stop)."""

    def wait(self, timeout: float | None = None) -> bool: ...

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...


def wake_all(wakes: list[Wake]) -> None:
    """Wake every worker (each waits on its own event, so none misses a wake-up)."""
    for wake in wakes:
        wake.set()


def work(
    runner: JobRunner,
    lane: str,
    stopping: Callable[[], bool],
    wake: Wake,
    sweep_lock: AbstractContextManager[object],
) -> None:
    """Run jobs until ``stopping()``; never raises (a failing job's row says what failed)."""
    settings, db = runner.settings, runner.db
    since_sweep = 0.0
    while not stopping():
        try:
            ran = run_one(runner, lane, stopping)
            since_sweep += 0 if ran else POLL_S
            if since_sweep >= max(settings.stale_after_s / 2, POLL_S):
                since_sweep = 0.0
                with sweep_lock:
                    lifecycle.requeue_stale(db, settings.stale_after_s, settings.max_attempts)
                    settle(db, settings)  # automatic calibrations of runs that settled
        except Exception:  # noqa: BLE001 - keep the worker alive; the row says what failed
            log.exception("local worker loop error")
            ran = False
        if not ran:
            wake.wait(POLL_S)
            wake.clear()


def run_one(runner: JobRunner, lane: str, stopping: Callable[[], bool]) -> bool:
    """Claim and run the first queued job of ``lane`` this worker can take; False if none."""
    for job_id in lifecycle.queued_ids(runner.db, runner.device, lane=lane):
        if stopping():
            return False
        if runner.run_job(job_id):
            return True
    return False
