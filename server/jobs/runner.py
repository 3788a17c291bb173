"""Run claimed jobs: one code path for the local pool and Celery workers.

``JobRunner.run_job(job_id)`` claims the job (a no-op if another worker has it or it is
already finished), claims queued companions for a batch, keeps heartbeats going from a side
thread, writes progress at most every ``PROGRESS_EVERY_S``, and finishes each job with its
results in one transaction. A job cancelled while running stops at its next progress call.

The job's lens (``server.lenses``) says what runs: before its handler, a run-scope lens's
checkpoint needs are checked (too few: the job goes back to ``waiting``) and its
applicability to the run's task (not applicable: the job ends ``not_applicable`` with the
reason). After a lens that feeds stage boundaries finishes, the lenses that rerun on
results (phases) are queued through ``on_phases``; after a job of a lens with ``on_done``
ends, ``on_done(run_id, lens)`` runs (``JobQueue.job_finished``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable

from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.allocator import release_free_memory
from phaseboard.server.jobs.handlers import (
    JobContext,
    JobFailed,
    JobLost,
    NotApplicable,
    WaitForCheckpoints,
    usable_checkpoints,
)
from phaseboard.server.jobs.lifecycle import Lease
from phaseboard.server.jobs.throughput import chain_steps
from phaseboard.server.lenses._registry import Lens, find_lens
from phaseboard.server.models import Job
from phaseboard.server.settings import Settings
from phaseboard.server.storage import BlobStore

log = logging.getLogger("phaseboard.jobs")
PROGRESS_EVERY_S = 0.5
BATCH_LIMIT = 8  # the default of settings.llc_batch_checkpoints


def parallel_calls(settings: Settings, device: str) -> int:
    """Sampler calls one job may run at once: on a CPU the local pool's workers (one per
    core by default, each one torch thread), on an accelerator one."""
    if device != "cpu" or settings.queue != "local":
        return 1
    return max(1, settings.local_workers)


def make_worker_id(device: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{device}:{uuid.uuid4().hex[:6]}"


class _Beat:
    """Heartbeat thread plus throttled progress writes for a set of leases."""

    def __init__(
        self,
        db: Database,
        leases: list[Lease],
        every_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.db, self.leases, self.every_s = db, list(leases), every_s
        self.should_stop = should_stop or (lambda: False)
        self.lost: set[int] = set()
        self._stop = threading.Event()
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="pb-heartbeat", daemon=True)

    def __enter__(self) -> _Beat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            for lease in self.leases:
                self._write(lease, None, None)

    def _write(self, lease: Lease, progress: float | None, message: str | None) -> None:
        try:
            with self._lock:
                if not lifecycle.heartbeat(self.db, lease, progress, message):
                    self.lost.add(lease.job_id)
        except Exception:  # noqa: BLE001 - a DB hiccup must not kill the job; retry next beat
            log.exception("heartbeat for job %s failed", lease.job_id)

    def progress_for(self, lease: Lease) -> Callable[[int, int, str], None]:
        def progress(done: int, total: int, message: str = "") -> None:
            if lease.job_id in self.lost:
                raise JobLost(f"job {lease.job_id} was cancelled or reassigned")
            if self.should_stop():
                raise JobLost("the worker is stopping")
            now = time.monotonic()
            if now - self._last.get(lease.job_id, 0.0) < PROGRESS_EVERY_S and done < total:
                return
            self._last[lease.job_id] = now
            self._write(lease, done / total if total else 0.0, message)
            if lease.job_id in self.lost:
                raise JobLost(f"job {lease.job_id} was cancelled or reassigned")

        return progress


class JobRunner:
    """Executes jobs on one device; ``on_phases(run_id)`` queues a run's phases job."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BlobStore,
        device: str,
        on_phases: Callable[[int], None] | None = None,
        worker_id: str | None = None,
        should_stop: Callable[[], bool] | None = None,
        peers: int = 1,
        on_done: Callable[[int, str], None] | None = None,
    ) -> None:
        self.settings, self.db, self.store, self.device = settings, db, store, device
        self.on_phases = on_phases
        self.on_done = on_done
        self.should_stop = should_stop
        self.worker_id = worker_id or make_worker_id(device)
        self.peers = peers  # workers sharing this one's batched jobs (see claim_companions)

    def run_job(self, job_id: int) -> bool:
        """Claim and run ``job_id`` (plus batch companions); False if it was not ours."""
        lease = lifecycle.claim(self.db, job_id, self.worker_id)
        if lease is None:
            return False
        limit = max(1, self.settings.llc_batch_checkpoints)
        self.run_leases([lease, *lifecycle.claim_companions(self.db, lease, limit, self.peers)])
        return True

    def run_leases(self, leases: list[Lease]) -> None:
        jobs: dict[int, Job] = {}
        with self.db.session() as s:
            for lease in leases:
                job = s.get(Job, lease.job_id)
                if job is not None:
                    s.expunge(job)
                    jobs[lease.job_id] = job
        by_id = {lease.job_id: lease for lease in leases}
        with _Beat(self.db, leases, self.settings.heartbeat_s, self.should_stop) as beat:
            ctxs = [
                JobContext(
                    job_id=j.id,
                    run_id=j.run_id,
                    checkpoint_id=j.checkpoint_id,
                    kind=j.kind,
                    config=dict(j.config or {}),
                    device=self.device,
                    db=self.db,
                    store=self.store,
                    progress=beat.progress_for(by_id[j.id]),
                    memory_mb=self.settings.llc_memory_mb,
                    allowed_factories=self.settings.model_factory_patterns,
                    parallel_calls=parallel_calls(self.settings, self.device),
                )
                for j in jobs.values()
            ]
            if not ctxs:
                return
            lens = find_lens(ctxs[0].kind)
            started = time.monotonic()
            outcomes = _run_lens(lens, ctxs, ctxs[0].kind)
        wall_s = time.monotonic() - started
        release_free_memory()  # the batch's tensors are gone: give their pages back
        steps = {
            job_id: chain_steps(out)  # type: ignore[arg-type]
            for job_id, out in outcomes.items()
            if isinstance(out, list)
        }
        batch_steps = sum(v for v in steps.values() if v)
        rate = batch_steps / wall_s if batch_steps and wall_s > 0 else None
        phases_runs: set[int] = set()
        ended: set[int] = set()  # runs where a job of this lens ended (for ``on_done``)
        for ctx in ctxs:
            lease = by_id[ctx.job_id]
            out = outcomes.get(ctx.job_id, JobFailed("no outcome"))
            if isinstance(out, JobLost):
                # Still ours (the worker is stopping): hand it back now, not after a timeout.
                if lifecycle.release(self.db, lease):
                    log.info("job %s interrupted (%s); queued again", ctx.job_id, out)
                continue
            if isinstance(out, WaitForCheckpoints):
                lifecycle.wait(self.db, lease, str(out))
                continue
            if isinstance(out, NotApplicable):
                if lifecycle.not_applicable(self.db, lease, str(out)):
                    ended.add(ctx.run_id)
                continue
            if isinstance(out, BaseException):
                if not isinstance(out, JobFailed):  # the traceback goes to the server log
                    log.error("job %s (%s) failed", ctx.job_id, ctx.kind, exc_info=out)
                if lifecycle.fail(self.db, lease, _error_text(out)):
                    ended.add(ctx.run_id)
                continue
            try:
                done = lifecycle.finish(
                    self.db,
                    lease,
                    out,  # type: ignore[arg-type]
                    chain_steps=steps.get(ctx.job_id),
                    chain_steps_per_s=rate if steps.get(ctx.job_id) else None,
                )
            except Exception as exc:  # noqa: BLE001 - results the store refuses fail the job
                log.error("job %s (%s): results not stored", ctx.job_id, ctx.kind, exc_info=exc)
                lifecycle.fail(self.db, lease, f"could not store the results: {exc}"[:2000])
                continue
            if done:
                ended.add(ctx.run_id)
            if done and lens is not None and lens.feeds_phases:
                phases_runs.add(ctx.run_id)
        if self.on_done is not None and lens is not None and lens.on_done is not None:
            for run_id in sorted(ended):
                try:
                    self.on_done(run_id, lens.name)
                except Exception:  # noqa: BLE001 - the job's outcome is stored; the sweep retries
                    log.exception("after %s on run %s", lens.name, run_id)
        if self.on_phases is not None:
            for run_id in sorted(phases_runs):
                try:
                    self.on_phases(run_id)
                except Exception:  # noqa: BLE001 - the results are in; phases can be rerun
                    log.exception("could not queue phases for run %s", run_id)


def _precheck(lens: Lens, ctx: JobContext) -> Exception | None:
    """Why the lens cannot run on this job's run now: too few checkpoints (it waits) or a
    task it does not apply to; None when it can."""
    if lens.scope == "run" and lens.min_checkpoints > 0:
        have = len(usable_checkpoints(ctx.db, ctx.run_id))
        if have < lens.min_checkpoints:
            return WaitForCheckpoints(lens.min_checkpoints, have)
    if lens.needs_task and lens.applies is not None:
        reason = lens.not_applicable(ctx.task())
        if reason:
            return NotApplicable(reason)
    return None


def _run_lens(lens: Lens | None, ctxs: list[JobContext], kind: str) -> dict[int, object]:
    """Each job's outcome: its result rows, or the exception that ended it."""
    if lens is None:
        return {ctx.job_id: JobFailed(f"no lens named {kind!r} is registered") for ctx in ctxs}
    try:
        blocked = _precheck(lens, ctxs[0])  # one run and lens: the same answer for all
        if blocked is not None:
            return {ctx.job_id: blocked for ctx in ctxs}
        if lens.batch_handler is not None and len(ctxs) > 1:
            return dict(lens.batch_handler(ctxs))
    except Exception as exc:  # noqa: BLE001 - a batch failure fails the batch
        return {ctx.job_id: exc for ctx in ctxs}
    outcomes: dict[int, object] = {}
    for ctx in ctxs:
        try:
            outcomes[ctx.job_id] = lens.handler(ctx)
        except Exception as exc:  # noqa: BLE001 - recorded on the job row
            outcomes[ctx.job_id] = exc
    return outcomes


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, JobFailed):
        return str(exc)
    tb = "".join(traceback.format_exception(exc))
    return f"{type(exc).__name__}: {exc}{lifecycle.TRACEBACK_SEP}{tb}"
