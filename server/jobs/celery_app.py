"""Celery on Redis: the scaled engine. Messages carry a job id and nothing else.

Routing: a job's ``device`` ("any" | "cpu" | "cuda") picks the queue ``pb.<device>``; a
worker started with ``--device cuda:0`` consumes ``pb.cuda`` and ``pb.any``, a CPU worker
``pb.cpu`` and ``pb.any``, so each takes only jobs it can run. Cheap lenses (``Lens.lane``
"fast", ``server.jobs.lanes``) that may run anywhere go to ``pb.fast`` instead, which
every worker also consumes; ``phaseboard worker --lane fast`` starts one that consumes only
``pb.fast``, so metrics and phases never wait behind LLC batches.

Delivery: ``task_acks_late`` + ``task_reject_on_worker_lost`` + prefetch 1 keep a message
until its job is finished, and the visibility timeout (``max_job_s`` + margin) stops Redis
from handing a long job out again while it runs. The SQL row decides: a message for a job
that is running or done claims nothing and is a no-op. A worker that died mid-job (heartbeat
older than ``stale_after_s``) is found by the sweep that every worker (and the API process)
runs at start and periodically; the job is requeued and a fresh message sent.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import sqlalchemy as sa
from celery import Celery, signals

from phaseboard.server.db import Database
from phaseboard.server.jobs import allocator, lifecycle
from phaseboard.server.jobs.base import JobQueue
from phaseboard.server.jobs.lanes import is_fast
from phaseboard.server.jobs.lanes import refresh as refresh_lanes
from phaseboard.server.jobs.runner import JobRunner
from phaseboard.server.jobs.worker_setup import start_warm_up
from phaseboard.server.models import Job
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore, open_blob_store

log = logging.getLogger("phaseboard.jobs")
TASK_NAME = "phaseboard.run_job"
VISIBILITY_MARGIN_S = 600
DEVICE_QUEUES = ("any", "cpu", "cuda")


def queue_name(device: str) -> str:
    """``pb.any`` / ``pb.cpu`` / ``pb.cuda`` for a job's device (or a worker's kind)."""
    kind = lifecycle.device_kind(device or "any")
    return f"pb.{kind if kind in DEVICE_QUEUES else 'any'}"


FAST_QUEUE = "pb.fast"


def job_queue(device: str, kind: str, db: Database | None = None) -> str:
    """The queue a job's message goes to: ``pb.fast`` for cheap kinds runnable anywhere
    (on ``db``'s measured costs, if given: ``server.jobs.lanes``)."""
    if is_fast(kind, db) and lifecycle.device_kind(device or "any") == "any":
        return FAST_QUEUE
    return queue_name(device)


def worker_queues(device: str, lane: str = "all") -> list[str]:
    """Queues a worker consumes: fast first; ``lane`` "fast" or "heavy" keeps one side."""
    heavy = [queue_name(device), queue_name("any")]
    if lane == "fast":
        return [FAST_QUEUE]
    if lane == "heavy":
        return heavy
    return [FAST_QUEUE, *heavy]


# Per worker process: set by ``phaseboard worker`` before Celery starts (and inherited by
# prefork children); the database engine is created lazily in each process.
_worker: dict[str, Any] = {}


def _runner() -> JobRunner:
    pid = os.getpid()
    runner = _worker.get("runner")
    if runner is None or _worker.get("pid") != pid:
        settings: Settings = _worker["settings"]
        allocator.reuse_freed_memory(settings.worker_heap_pad_mb)  # this (prefork) process
        db = Database(settings)
        store = open_blob_store(settings)
        queue = CeleryQueue(settings, db, store, app=_worker["app"])
        runner = JobRunner(
            settings, db, store, _worker["device"], queue.request_phases,
            on_done=queue.job_finished,
        )  # fmt: skip
        _worker.update(runner=runner, pid=pid, queue=queue)
    return runner


def make_celery(settings: Settings) -> Celery:
    """A Celery app on ``settings.redis_url`` with the delivery guarantees above."""
    app = Celery("phaseboard", broker=settings.redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": int(settings.max_job_s) + VISIBILITY_MARGIN_S
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=queue_name("any"),
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK_NAME, ignore_result=True)
    def run_job(job_id: int) -> bool:
        return _runner().run_job(int(job_id))

    return app


class CeleryQueue(JobQueue):
    """Sends job ids to Redis; runs a stale-job sweep thread while started."""

    engine = "celery"

    def __init__(
        self, settings: Settings, db: Database, store: BlobStore, app: Celery | None = None
    ) -> None:
        super().__init__(settings, db, store)
        self.app = app or make_celery(settings)
        self._stop = threading.Event()
        self._resend_needed = threading.Event()
        self._resend_needed.set()  # the sweep re-announces queued jobs once at start
        self._thread: threading.Thread | None = None

    def enqueue(self, job_ids: list[int]) -> None:
        """Send one message per job. If Redis is away the rows stay queued (nothing is lost)
        and the sweep thread re-sends every queued job once Redis answers again."""
        if not job_ids:
            return
        refresh_lanes(self.db)  # a lens's queue follows its measured cost
        with self.db.session() as s:
            rows = s.execute(
                sa.select(Job.id, Job.device, Job.kind).where(Job.id.in_(job_ids))
            ).all()
        try:
            for job_id, device, kind in sorted(rows):
                self.app.send_task(TASK_NAME, args=[job_id], queue=job_queue(device, kind, self.db))
        except Exception:  # noqa: BLE001 - broker down: SQL holds the jobs, resend later
            log.exception("could not send %d job(s) to the broker; will resend", len(rows))
            self._resend_needed.set()

    def resend_queued(self) -> int:
        """Send a message for every queued job (messages lost with Redis); duplicates no-op."""
        rows = lifecycle.queued_all(self.db)
        refresh_lanes(self.db)
        try:
            for job_id, device, kind in rows:
                self.app.send_task(TASK_NAME, args=[job_id], queue=job_queue(device, kind, self.db))
        except Exception:
            self._resend_needed.set()
            raise
        return len(rows)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._sweep_loop, name="pb-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _sweep_loop(self) -> None:
        every = max(0.5, min(self.settings.stale_after_s / 2, 30.0))
        while not self._stop.is_set():
            try:
                self.sweep()
                if self._resend_needed.is_set():
                    self._resend_needed.clear()
                    self.resend_queued()
            except Exception:  # noqa: BLE001 - Redis or SQL briefly away: try again later
                log.exception("stale-job sweep failed")
            self._stop.wait(every)


def run_worker(
    settings: Settings,
    device: str,
    concurrency: int = 1,
    loglevel: str = "INFO",
    lane: str = "all",
) -> None:
    """Run a Celery worker for ``device`` in this process (``phaseboard worker``)."""
    app = make_celery(settings)
    _worker.update(settings=settings, device=device, app=app)

    sweeper: dict[str, CeleryQueue] = {}

    @signals.worker_ready.connect(weak=False)
    def _start_sweeper(**_: Any) -> None:
        db = Database(settings)
        queue = CeleryQueue(settings, db, open_blob_store(settings), app=app)
        queue.start()
        sweeper["queue"] = queue

    @signals.worker_process_init.connect(weak=False)
    def _warm_up(**_: Any) -> None:  # each prefork child, before its first task
        start_warm_up([device])

    @signals.worker_shutdown.connect(weak=False)
    def _stop_sweeper(**_: Any) -> None:
        if "queue" in sweeper:
            sweeper["queue"].stop()

    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(worker_queues(device, lane)),
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"phaseboard-{device.replace(':', '')}-{os.getpid()}@%h",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
