"""``LocalQueue``: the embedded default, a pool of worker threads inside the server.

One thread per slot; slots are ``settings.worker_devices`` (comma list), repeated up to
``settings.local_workers`` threads (default: one per core), so each thread runs one job at a
time on its device; ``settings.local_fast_workers`` more threads take only cheap kinds (see
``server.jobs.lanes``). torch runs ``settings.torch_threads`` intra-op threads (default 1:
one worker per core beat fewer workers with more threads, bench/RESULTS.md), and malloc
keeps freed tensors for reuse (``server.jobs.allocator``).
Threads poll SQL for queued jobs and wake early on ``enqueue``. ``start`` first requeues
jobs left running by a previous process, so a restarted server loses nothing.
"""

from __future__ import annotations

import logging
import threading

from server.db import Database
from server.jobs import allocator, lifecycle
from server.jobs.base import JobQueue
from server.jobs.runner import JobRunner
from server.settings import Settings
from server.storage import BlobStore

log = logging.getLogger("phaseboard.jobs")
POLL_S = 1.0


def _ids(ids: list[int]) -> tuple[int, str]:
    return len(ids), ", ".join(map(str, ids[:20]))


class LocalQueue(JobQueue):
    engine = "local"

    def __init__(self, settings: Settings, db: Database, store: BlobStore) -> None:
        super().__init__(settings, db, store)
        devices = [d.strip() for d in settings.worker_devices.split(",") if d.strip()] or ["cpu"]
        n = max(settings.local_workers, len(devices))
        self.devices = [devices[i % len(devices)] for i in range(n)]
        # (device, lane) per thread: the general ones, then the fast lane on the first device.
        self.slots = [(d, "all") for d in self.devices]
        self.slots += [(devices[0], "fast")] * max(0, settings.local_fast_workers)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sweep_lock = threading.Lock()

    def start(self) -> None:
        if self._threads:
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
        allocator.reuse_freed_memory(self.settings.worker_heap_pad_mb)
        if self.settings.torch_threads > 0:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        for i, (device, lane) in enumerate(self.slots):
            runner = JobRunner(
                self.settings,
                self.db,
                self.store,
                device,
                self.request_phases,
                should_stop=self._stop.is_set,
                # The general threads on this device split a run's batched jobs between them.
                peers=self.devices.count(device) if lane == "all" else 1,
            )
            t = threading.Thread(
                target=self._loop,
                args=(runner, lane),
                name=f"pb-worker-{i}-{device}-{lane}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop: running jobs are interrupted at their next progress report and queued again
        (a restart resumes them); threads are joined for up to ``timeout``."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=timeout)
        self._threads = []

    def enqueue(self, job_ids: list[int]) -> None:
        if job_ids:
            self._wake.set()

    def _loop(self, runner: JobRunner, lane: str = "all") -> None:
        since_sweep = 0.0
        while not self._stop.is_set():
            try:
                ran = self._run_one(runner, lane)
                since_sweep += 0 if ran else POLL_S
                if since_sweep >= max(self.settings.stale_after_s / 2, POLL_S):
                    since_sweep = 0.0
                    with self._sweep_lock:
                        lifecycle.requeue_stale(
                            self.db, self.settings.stale_after_s, self.settings.max_attempts
                        )
            except Exception:  # noqa: BLE001 - keep the pool alive; the row says what failed
                log.exception("local worker loop error")
                ran = False
            if not ran:
                self._wake.wait(POLL_S)
                self._wake.clear()

    def _run_one(self, runner: JobRunner, lane: str = "all") -> bool:
        for job_id in lifecycle.queued_ids(self.db, runner.device, lane=lane):
            if self._stop.is_set():
                return False
            if runner.run_job(job_id):
                return True
        return False
