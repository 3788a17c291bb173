"""``LocalQueue``: the embedded default, a pool of workers started by the server.

Slots are ``settings.worker_devices`` (comma list), repeated up to ``settings.local_workers``
general workers (default: one per core), each running one job at a time on its device, plus
``settings.local_fast_workers`` threads that take only cheap kinds (see
``server.jobs.lanes``). With ``local_pool = "threads"`` (the default) each general worker is
a thread of the server; with ``"processes"`` a child process (``server.jobs.worker_process``),
replaced if it dies. torch runs ``settings.torch_threads`` intra-op threads per
worker (default 1: one worker per core beat fewer workers with more threads,
bench/RESULTS.md), malloc keeps freed tensors for reuse and the sampler is warmed up
while the workers wait (``server.jobs.worker_setup``).
Workers poll SQL for queued jobs (``server.jobs.worker_loop``) and wake early on ``enqueue``.
``start`` first requeues jobs left running by a previous process, so a restarted server
loses nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable

from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.base import JobQueue
from phaseboard.server.jobs.runner import JobRunner
from phaseboard.server.jobs.worker_loop import POLL_S, Wake, wake_all, work
from phaseboard.server.jobs.worker_process import WorkerProcess, WorkerSpec
from phaseboard.server.jobs.worker_setup import prepare_process, start_warm_up
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore

log = logging.getLogger("phaseboard.jobs")
RESTART_BACKOFF_S = (1.0, 60.0)  # a child that keeps dying young is restarted ever later


def _ids(ids: list[int]) -> tuple[int, str]:
    return len(ids), ", ".join(map(str, ids[:20]))


def _shared_database(url: str) -> bool:
    """Whether other processes can open the same database (not SQLite in memory)."""
    return not (url.startswith("sqlite") and (":memory:" in url or url.rstrip("/") == "sqlite:"))


class LocalQueue(JobQueue):
    engine = "local"

    def __init__(self, settings: Settings, db: Database, store: BlobStore) -> None:
        super().__init__(settings, db, store)
        devices = [d.strip() for d in settings.worker_devices.split(",") if d.strip()] or ["cpu"]
        n = max(settings.local_workers, len(devices))
        self.devices = [devices[i % len(devices)] for i in range(n)]
        # (device, lane) per worker: the general ones, then the fast lane on the first device.
        self.slots = [(d, "all") for d in self.devices]
        self.slots += [(devices[0], "fast")] * max(0, settings.local_fast_workers)
        self.processes = settings.local_pool == "processes" and _shared_database(
            settings.database_url
        )
        self._mp = multiprocessing.get_context("spawn")  # never fork a threaded server
        # Events a child process can share only with processes (which also start
        # multiprocessing's resource tracker); they work for threads too.
        event = self._mp.Event if self.processes else threading.Event
        self._stop: Wake = event()
        self._wakes: list[Wake] = [event() for _ in self.slots]
        self._threads: list[threading.Thread] = []
        self._children: list[WorkerProcess] = []
        self._sweep_lock = threading.Lock()

    def start(self) -> None:
        if self._threads or self._children:
            return
        self._stop.clear()
        # Jobs held by a dead process on this host (a kill -9 of the previous boot): now.
        reclaimed = lifecycle.requeue_orphaned(self.db, self.settings.max_attempts)
        if reclaimed:
            log.info("requeued %d job(s) of a worker process that ended: %s", *_ids(reclaimed))
        # A live worker beats every heartbeat_s: jobs silent for three beats were left by a
        # previous process (a restart); take them back now rather than after stale_after_s.
        quiet = min(self.settings.stale_after_s, 3 * self.settings.heartbeat_s)
        lifecycle.requeue_stale(self.db, quiet, self.settings.max_attempts)
        prepare_process(self.settings)  # for the threads here: workers, or the fast lane
        if not self.processes:  # child processes warm up their own (child_main)
            start_warm_up(self.devices)
        for i, ((device, lane), wake) in enumerate(zip(self.slots, self._wakes, strict=True)):
            # The general workers on this device split a run's batched jobs between them.
            peers = self.devices.count(device) if lane == "all" else 1
            if self.processes and lane == "all":
                spec = WorkerSpec(i, device, peers, self.settings.model_dump(), os.getpid())
                self._children.append(
                    WorkerProcess(self._mp, spec, self._stop, wake, self._wakes).start()
                )
                continue
            runner = JobRunner(
                self.settings,
                self.db,
                self.store,
                device,
                self.request_phases,
                should_stop=self._stop.is_set,
                peers=peers,
                on_done=self.job_finished,
            )
            args = (runner, lane, self._stop.is_set, wake, self._sweep_lock)
            self._start_thread(f"pb-worker-{i}-{device}-{lane}", lambda a=args: work(*a))
        if self._children:
            self._start_thread("pb-worker-watch", self._watch_children)

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _watch_children(self) -> None:
        """Replace a child worker that died (a crash, the OOM killer) and requeue its jobs
        now rather than after ``stale_after_s``."""
        due: dict[int, float] = {}  # slot -> when to restart it
        fails: dict[int, int] = {}
        while not self._stop.wait(POLL_S):
            for i, child in enumerate(self._children):
                if child.alive():
                    if time.monotonic() - child.started_at > RESTART_BACKOFF_S[1]:
                        fails.pop(i, None)
                    continue
                if i not in due:
                    child.join(0)
                    log.warning(
                        "worker process %s ended (exit code %s); starting another",
                        child.process.pid,
                        child.process.exitcode,
                    )
                    requeued = lifecycle.requeue_orphaned(self.db, self.settings.max_attempts)
                    if requeued:
                        log.info("requeued %d job(s) of that process: %s", *_ids(requeued))
                    fails[i] = fails.get(i, 0) + 1
                    wait_s = min(RESTART_BACKOFF_S[1], RESTART_BACKOFF_S[0] * 2 ** (fails[i] - 1))
                    due[i] = time.monotonic() + wait_s
                if time.monotonic() >= due[i] and not self._stop.is_set():
                    del due[i]
                    self._children[i] = child.replacement()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop: running jobs are interrupted at their next progress report and queued again
        (a restart resumes them); workers are joined for up to ``timeout``."""
        self._stop.set()
        wake_all(self._wakes)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        for child in self._children:
            child.join(max(0.0, deadline - time.monotonic()))
        if self._children:  # a child killed above held its jobs to the end
            lifecycle.requeue_orphaned(self.db, self.settings.max_attempts)
        self._threads, self._children = [], []

    def enqueue(self, job_ids: list[int]) -> None:
        if job_ids:
            wake_all(self._wakes)
