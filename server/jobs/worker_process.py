"""A local worker in a child process of the server (``local_pool = "processes"``).

What a process buys over a thread is isolation: the OOM killer or a crash in native code
takes one worker, not the server with every job's state. (Not speed: on the demo's
restricted LLCs two worker processes were no faster than two threads, bench/RESULTS.md.) A
child runs the same loop as a thread (``server.jobs.worker_loop.work``) on its own database
engine and is told to stop through an event. It stops on its own when the server that
started it is gone (a ``kill -9``), handing its job back. The parent replaces a child that
dies (``LocalQueue``'s watcher) and requeues that child's jobs at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Event
from typing import Any

from phaseboard.server.db import Database
from phaseboard.server.jobs.base import JobQueue
from phaseboard.server.jobs.runner import JobRunner
from phaseboard.server.jobs.worker_loop import wake_all, work
from phaseboard.server.jobs.worker_setup import prepare_process, start_warm_up
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore, open_blob_store

log = logging.getLogger("phaseboard.jobs")


@dataclass(frozen=True)
class WorkerSpec:
    """What a child needs to start: pickled to it by ``multiprocessing``'s spawn."""

    index: int
    device: str
    peers: int  # workers sharing this one's batched jobs (see lifecycle.claim_companions)
    settings: dict[str, Any]
    parent_pid: int


class _Announcer(JobQueue):
    """A child's queue: plans jobs (the phases after an LLC batch) in SQL, wakes every worker."""

    def __init__(self, settings: Settings, db: Database, store: BlobStore, wakes: list[Event]):
        super().__init__(settings, db, store)
        self.wakes = wakes

    def enqueue(self, job_ids: list[int]) -> None:
        if job_ids:
            wake_all(self.wakes)


def child_main(spec: WorkerSpec, stop: Event, wake: Event, wakes: list[Event]) -> None:
    """The child's entry point: a worker loop until ``stop``, SIGTERM or the parent's end."""
    # Ctrl-C in a terminal reaches the whole process group: the server stops its children
    # through ``stop``, so a job is handed back rather than killed mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [worker {spec.index} pid %(process)d] %(message)s",
    )
    settings = Settings(**spec.settings)
    prepare_process(settings)
    start_warm_up([spec.device])

    def stopping() -> bool:
        return stop.is_set() or terminated.is_set() or os.getppid() != spec.parent_pid

    db = Database(settings)
    store = open_blob_store(settings)
    queue = _Announcer(settings, db, store, wakes)
    runner = JobRunner(
        settings,
        db,
        store,
        spec.device,
        queue.request_phases,
        should_stop=stopping,
        peers=spec.peers,
        on_done=queue.job_finished,
    )
    try:
        work(runner, "all", stopping, wake, nullcontext())
    finally:
        db.dispose()


class WorkerProcess:
    """The parent's handle on one child worker; ``replacement()`` starts a new one."""

    def __init__(
        self, ctx: SpawnContext, spec: WorkerSpec, stop: Event, wake: Event, wakes: list[Event]
    ) -> None:
        self.ctx, self.spec, self.stop, self.wake, self.wakes = ctx, spec, stop, wake, wakes
        self.process: SpawnProcess = ctx.Process(
            target=child_main,
            args=(spec, stop, wake, wakes),
            name=f"pb-worker-{spec.index}-{spec.device}",
            daemon=True,
        )
        self.started_at = 0.0

    def start(self) -> WorkerProcess:
        self.process.start()
        self.started_at = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.process.is_alive()

    def replacement(self) -> WorkerProcess:
        return WorkerProcess(self.ctx, self.spec, self.stop, self.wake, self.wakes).start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a stop; then SIGTERM (it hands its job back at the
        next progress report), then SIGKILL. Reaped either way, so its pid reads as gone."""
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("worker process %s did not stop in time; terminating", self.process.pid)
            self.process.terminate()
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
