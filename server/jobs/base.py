"""The ``JobQueue`` interface: plan jobs into SQL, then tell an engine to run them.

Engines differ only in ``enqueue`` (wake the local pool / send Celery messages) and in
``start``/``stop``. ``NullQueue`` (``queue = "none"``) plans and runs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.planning import (
    analyses_for_run,
    plan_jobs,
    run_analyses_for_run,
    usable_checkpoint_count,
)
from phaseboard.server.lenses._registry import all_lenses, find_lens
from phaseboard.server.models import Job, Run
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore


class JobQueue:
    """Plans jobs into SQL (the truth) and hands their ids to an engine."""

    engine = "none"

    def __init__(self, settings: Settings, db: Database, store: BlobStore) -> None:
        self.settings, self.db, self.store = settings, db, store

    # --- engine hooks --------------------------------------------------------------

    def start(self) -> None:
        """Start workers/sweepers (idempotent)."""

    def stop(self) -> None:
        """Stop gracefully: running jobs finish or are left to the stale sweep."""

    def enqueue(self, job_ids: list[int]) -> None:
        """Tell workers about queued jobs (their rows are already committed)."""

    # --- planning --------------------------------------------------------------------

    def plan_and_enqueue(
        self,
        run_id: int,
        kinds: Iterable[str],
        checkpoint_ids: Iterable[int] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Plan ``kinds`` on the run's checkpoints (all when None), enqueue; job ids."""
        with self.db.session() as s:
            auto = self.settings.auto_calibrate
            ids = plan_jobs(s, run_id, kinds, checkpoint_ids, config, auto_calibrate=auto)
            queued = list(
                s.scalars(sa.select(Job.id).where(Job.id.in_(ids), Job.state == "queued"))
            )
        self.enqueue(sorted(queued))
        return ids

    def checkpoints_added(self, run_id: int, checkpoint_ids: list[int]) -> list[int]:
        """Queue the run's automatic lenses for new checkpoints (none if it has no task),
        and the run's waiting jobs whose lens now has the checkpoints it needs."""
        with self.db.session() as s:
            run = s.get(Run, run_id)
            if run is None or not run.task:
                return []
            kinds = analyses_for_run(run, self.settings.auto_analyses)
            run_kinds = run_analyses_for_run(run, self.settings.auto_analyses)
        if not checkpoint_ids:
            return []
        ids = self.wake_waiting(run_id)
        # A woken job was woken after these checkpoints were stored, so it reads them: it is
        # the rerun, even if a worker has already claimed it (no longer "queued").
        with self.db.session() as s:
            woken = set(s.scalars(sa.select(Job.kind).where(Job.id.in_(ids)))) if ids else set()
        ids += self.plan_and_enqueue(run_id, kinds, checkpoint_ids) if kinds else []
        for kind in run_kinds:  # run-level lenses re-read every checkpoint: one waiting is enough
            if kind not in woken:
                ids += self.request_run_kind(run_id, kind)
        return list(dict.fromkeys(ids))

    def wake_waiting(self, run_id: int) -> list[int]:
        """Queue the run's jobs that wait for checkpoints the run now has; their ids."""
        needs = {lens.name: lens.min_checkpoints for lens in all_lenses() if lens.scope == "run"}
        with self.db.session() as s:
            usable = usable_checkpoint_count(s, run_id)
        woken = lifecycle.wake_waiting(self.db, run_id, usable, needs)
        self.enqueue(woken)
        return woken

    def request_phases(self, run_id: int) -> list[int]:
        """Queue the lenses that rerun on results (``Lens.rerun == "results"``: phases) after
        a lens that feeds them finished, unless one is already queued (it reads late)."""
        ids: list[int] = []
        for lens in all_lenses():
            if lens.rerun == "results":
                ids += self.request_run_kind(run_id, lens.name)
        return ids

    def request_run_kind(self, run_id: int, kind: str) -> list[int]:
        """Queue a run-level job unless one of ``kind`` is already queued or waiting (it reads
        the run when it runs)."""
        with self.db.session() as s:
            pending = s.scalar(
                sa.select(Job.id)
                .where(
                    Job.run_id == run_id,
                    Job.kind == kind,
                    Job.state.in_(("queued", lifecycle.WAITING)),
                )
                .limit(1)
            )
        if pending is not None:
            return [pending]
        return self.plan_and_enqueue(run_id, [kind])

    def job_finished(self, run_id: int, kind: str) -> list[int]:
        """A job of lens ``kind`` on the run ended: run the lens's ``on_done`` (the
        calibration applies its recommendation) and queue what it planned."""
        lens = find_lens(kind)
        if lens is None or lens.on_done is None:
            return []
        ids = lens.on_done(self.db, self.settings, run_id)
        self.enqueue(ids)
        return ids

    def run_settled(self, run_id: int) -> list[int]:
        """The run will get no more checkpoints for now (its client finished, an import
        ended): start its automatic calibration if LLC jobs wait for one."""
        from phaseboard.server.jobs.auto_calibration import start_calibration

        ids = start_calibration(self.db, self.settings, run_id)
        self.enqueue(ids)
        return ids

    def sweep(self) -> list[int]:
        """Requeue jobs whose worker died; re-announce them; start the automatic
        calibrations of runs that settled. Returns the ids queued."""
        from phaseboard.server.jobs.auto_calibration import settle

        ids = lifecycle.requeue_stale(
            self.db, self.settings.stale_after_s, self.settings.max_attempts
        )
        ids += settle(self.db, self.settings)
        if ids:
            self.enqueue(ids)
        return ids


class NullQueue(JobQueue):
    """Plans jobs into SQL, runs nothing (``queue = "none"``; tests and API-only servers)."""
