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
from phaseboard.server.jobs.planning import analyses_for_run, plan_jobs, run_analyses_for_run
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
            ids = plan_jobs(s, run_id, kinds, checkpoint_ids, config)
            queued = list(
                s.scalars(sa.select(Job.id).where(Job.id.in_(ids), Job.state == "queued"))
            )
        self.enqueue(sorted(queued))
        return ids

    def checkpoints_added(self, run_id: int, checkpoint_ids: list[int]) -> list[int]:
        """Queue the run's automatic analyses for new checkpoints (none if it has no task)."""
        with self.db.session() as s:
            run = s.get(Run, run_id)
            if run is None or not run.task:
                return []
            kinds = analyses_for_run(run, self.settings.auto_analyses)
            run_kinds = run_analyses_for_run(run, self.settings.auto_analyses)
        if not checkpoint_ids:
            return []
        ids = self.plan_and_enqueue(run_id, kinds, checkpoint_ids) if kinds else []
        for kind in run_kinds:  # run-level lenses re-read every checkpoint: one waiting is enough
            ids += self.request_run_kind(run_id, kind)
        return ids

    def request_phases(self, run_id: int) -> list[int]:
        """Queue a run's phases job unless one is already waiting (it reads results late)."""
        return self.request_run_kind(run_id, "phases")

    def request_run_kind(self, run_id: int, kind: str) -> list[int]:
        """Queue a run-level job unless one of ``kind`` is already waiting (it reads late)."""
        with self.db.session() as s:
            waiting = s.scalar(
                sa.select(Job.id)
                .where(Job.run_id == run_id, Job.kind == kind, Job.state == "queued")
                .limit(1)
            )
        if waiting is not None:
            return [waiting]
        return self.plan_and_enqueue(run_id, [kind])

    def sweep(self) -> list[int]:
        """Requeue jobs whose worker died; re-announce them. Returns requeued ids."""
        ids = lifecycle.requeue_stale(
            self.db, self.settings.stale_after_s, self.settings.max_attempts
        )
        if ids:
            self.enqueue(ids)
        return ids


class NullQueue(JobQueue):
    """Plans jobs into SQL, runs nothing (``queue = "none"``; tests and API-only servers)."""
