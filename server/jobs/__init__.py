"""Asynchronous analysis jobs: plan rows in SQL, run them on a local pool or Celery workers.

``make_queue(settings, db, store)`` picks the engine from ``settings.queue``:
``"local"`` (worker threads or processes started by the server), ``"celery"`` (Redis
broker, ``phaseboard worker``) or ``"none"`` (plans jobs, runs nothing). All engines share
planning, the SQL lifecycle and the handlers; see ``server.jobs.planning`` for kinds and
deduplication.
"""

from __future__ import annotations

from phaseboard.server.db import Database
from phaseboard.server.jobs.base import JobQueue, NullQueue
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore


def make_queue(settings: Settings, db: Database, store: BlobStore) -> JobQueue:
    """The job queue chosen by ``settings.queue``."""
    if settings.queue == "local":
        from phaseboard.server.jobs.local import LocalQueue

        return LocalQueue(settings, db, store)
    if settings.queue == "celery":
        from phaseboard.server.jobs.celery_app import CeleryQueue

        return CeleryQueue(settings, db, store)
    return NullQueue(settings, db, store)


__all__ = ["JobQueue", "NullQueue", "make_queue"]
