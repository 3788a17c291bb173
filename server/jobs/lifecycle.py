"""Job state transitions as single SQL statements that are safe on SQLite and PostgreSQL.

queued -> running -> done | failed | cancelled | not_applicable | waiting, and waiting ->
queued when the run has the checkpoints its lens needs (``wake_waiting``). ``waiting`` and
``not_applicable`` are no failures: the lens waits for more checkpoints, or does not apply
to the run's task (the job's ``progress_msg`` says which and why).

Every transition of a running job is fenced on ``(state='running', worker_id, attempts)``:
a worker that lost its job (it was cancelled, or requeued as stale and claimed again)
matches no row and its late writes change nothing. Results are inserted in the same
transaction that marks the job done, so a job has either all of its results or none, and
``uq_result_job_restriction`` keeps exactly one per restriction even if two workers ever
raced to the end.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.db import Database, get_existing
from phaseboard.server.errors import Conflict
from phaseboard.server.jobs.lanes import claim_order, is_batched, lane_filter
from phaseboard.server.jobs.lanes import refresh as refresh_lanes
from phaseboard.server.models import Checkpoint, Job, Result, utcnow

ACTIVE = ("queued", "running")
WAITING = "waiting"  # for more checkpoints: neither active nor final
FINAL = ("done", "failed", "cancelled", "not_applicable")
STATES = (*ACTIVE, WAITING, *FINAL)
ERROR_MAX = 20_000


@dataclass(frozen=True)
class Lease:
    """A claimed job: the fence every later write of this worker must match."""

    job_id: int
    worker_id: str
    attempt: int
    kind: str = ""


def _fence(lease: Lease) -> Any:
    return sa.and_(
        Job.id == lease.job_id,
        Job.state == "running",
        Job.worker_id == lease.worker_id,
        Job.attempts == lease.attempt,
    )


def _taken_by(worker_id: str) -> dict[str, Any]:
    """The columns a claim sets on a queued job."""
    now = utcnow()
    return {
        "state": "running",
        "worker_id": worker_id,
        "attempts": Job.attempts + 1,
        "heartbeat_at": now,
        "started_at": now,
        "progress": 0.0,
        "progress_msg": "claimed",
        "error": None,
    }


def claim(db: Database, job_id: int, worker_id: str) -> Lease | None:
    """Atomically take a queued job; None if someone else has it (or it is not queued).

    One ``UPDATE ... WHERE state='queued' RETURNING`` (SQLite >= 3.35 and PostgreSQL): of
    any number of racing workers exactly one gets the row back.
    """
    with db.session() as s:
        row = s.execute(
            sa.update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(**_taken_by(worker_id))
            .returning(Job.attempts, Job.kind)
            .execution_options(synchronize_session=False)
        ).first()
    if row is None:
        return None
    return Lease(job_id, worker_id, int(row[0]), str(row[1]))


def device_kind(device: str) -> str:
    """``cuda:0`` -> ``cuda``; ``cpu`` -> ``cpu``."""
    return device.split(":", 1)[0]


def queued_ids(db: Database, device: str, limit: int = 20, lane: str = "all") -> list[int]:
    """Queued jobs a worker on ``device`` in ``lane`` can run: fast kinds first, then oldest
    (see ``server.jobs.lanes``: the lanes follow the lenses' measured costs)."""
    refresh_lanes(db)
    with db.session() as s:
        return list(
            s.scalars(
                sa.select(Job.id)
                .where(
                    Job.state == "queued",
                    Job.device.in_(("any", device_kind(device))),
                    lane_filter(lane, db),
                )
                .order_by(*claim_order(db))
                .limit(limit)
            )
        )


def claim_companions(db: Database, lease: Lease, limit: int, peers: int = 1) -> list[Lease]:
    """More queued jobs of a batched lens (``llc``, ``llc_restricted``) with the same run,
    config and device, to run in one vectorised batch.

    ``peers``: how many workers (this one included) share these jobs. Each takes at most an
    even share of the run's jobs of the kind that are left to do: the queued ones, plus what
    remains of those the others hold (a job at 90 % counts 0.1). So 8 jobs and 2 idle workers
    make two batches of 4 side by side rather than one batch of 8 and an idle core, and a
    worker whose batch ends while the other's is about to leaves it its share.

    The companions are taken in one ``WITH picked AS (SELECT ... LIMIT n) UPDATE`` statement
    (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): two workers claiming at once each get a
    whole batch, never an interleaving of each other's (which split 32 jobs 8 + 9, leaving
    the rest for a second, unbalanced round).
    """
    if limit <= 1 or not is_batched(lease.kind):
        return []
    with db.session() as s:
        job = s.get(Job, lease.job_id)
        if job is None or job.kind != lease.kind:
            return []
        same = (
            Job.kind == job.kind,
            Job.run_id == job.run_id,
            Job.config_hash == job.config_hash,
        )
        queued = (Job.state == "queued", Job.device == job.device, *same)
        if peers > 1:
            waiting = s.scalar(sa.select(sa.func.count()).select_from(Job).where(*queued)) or 0
            held = s.scalar(
                sa.select(sa.func.sum(1.0 - Job.progress)).where(
                    Job.state == "running", Job.worker_id != lease.worker_id, *same
                )
            )
            limit = min(limit, math.ceil((waiting + float(held or 0) + 1) / peers))
            if limit <= 1:
                return []
    with db.session() as s:  # its own write transaction, after the reads above
        pick = sa.select(Job.id).where(*queued).order_by(Job.id).limit(limit - 1)
        if s.get_bind().dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        # A CTE, so PostgreSQL evaluates the LIMIT once (an IN subplan may run per row).
        picked = pick.cte("picked")
        rows = s.execute(
            sa.update(Job)
            .where(Job.id.in_(sa.select(picked.c.id)), Job.state == "queued")
            .values(**_taken_by(lease.worker_id))
            .returning(Job.id, Job.attempts, Job.kind)
            .execution_options(synchronize_session=False)
        ).all()
    leases = [Lease(int(i), lease.worker_id, int(a), str(k)) for i, a, k in rows]
    return sorted(leases, key=lambda x: x.job_id)


def heartbeat(
    db: Database, lease: Lease, progress: float | None = None, message: str | None = None
) -> bool:
    """Refresh the heartbeat (and progress); False if the job is no longer ours."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, float(progress)))
    if message is not None:
        values["progress_msg"] = message[:300]
    with db.session() as s:
        res = s.execute(
            sa.update(Job)
            .where(_fence(lease))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1


def finish(
    db: Database,
    lease: Lease,
    results: Iterable[Mapping[str, Any]],
    *,
    chain_steps: float | None = None,
    chain_steps_per_s: float | None = None,
) -> bool:
    """Mark done and insert results in one transaction; False (nothing written) if lost.

    Each result mapping has ``restriction`` and ``values`` (non-finite floats stored as
    null, ``json_safe``); run, checkpoint, step and kind come from the job.
    ``chain_steps``/``chain_steps_per_s``: the measured SGLD throughput
    (``server.jobs.throughput``).
    """
    with db.session() as s:
        res = s.execute(
            sa.update(Job)
            .where(_fence(lease))
            .values(
                state="done",
                progress=1.0,
                progress_msg="done",
                finished_at=utcnow(),
                chain_steps=chain_steps,
                chain_steps_per_s=chain_steps_per_s,
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            s.rollback()
            return False
        job = s.get(Job, lease.job_id)
        assert job is not None
        step = None
        if job.checkpoint_id is not None:
            step = s.scalar(sa.select(Checkpoint.step).where(Checkpoint.id == job.checkpoint_id))
        for r in results:
            s.add(
                Result(
                    job_id=job.id,
                    run_id=job.run_id,
                    checkpoint_id=job.checkpoint_id,
                    step=step,
                    kind=job.kind,
                    restriction=str(r.get("restriction", "")),
                    values=json_safe(dict(r.get("values") or {})),
                )
            )
    return True


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) as None: JSON has no NaN, PostgreSQL
    refuses it and SQLite would store what no reader parses."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def fail(db: Database, lease: Lease, error: str) -> bool:
    """Mark a running job failed with ``error``; False if it was no longer ours."""
    with db.session() as s:
        res = s.execute(
            sa.update(Job)
            .where(_fence(lease))
            .values(state="failed", error=error[-ERROR_MAX:], finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1


def wait(db: Database, lease: Lease, message: str) -> bool:
    """Put a running job back to ``waiting`` (its run has too few checkpoints now, say one
    was deleted); ``wake_waiting`` queues it again. False if it was no longer ours."""
    with db.session() as s:
        res = s.execute(
            sa.update(Job)
            .where(_fence(lease))
            .values(state=WAITING, worker_id=None, progress=0.0, progress_msg=message[:300])
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1


def not_applicable(db: Database, lease: Lease, reason: str) -> bool:
    """End a running job as ``not_applicable`` with ``reason``, and with it every queued or
    waiting job of the same lens on the run (the reason is the task's, not a checkpoint's):
    the run says it once. False if the job was no longer ours."""
    values = {
        "state": "not_applicable",
        "progress_msg": reason[:300],
        "finished_at": utcnow(),
        "worker_id": None,
    }
    with db.session() as s:
        res = s.execute(
            sa.update(Job)
            .where(_fence(lease))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            s.rollback()
            return False
        job = s.get(Job, lease.job_id)
        assert job is not None
        s.execute(
            sa.update(Job)
            .where(
                Job.run_id == job.run_id,
                Job.kind == job.kind,
                Job.state.in_(("queued", WAITING)),
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    return True


def wake_waiting(db: Database, run_id: int, usable: int, needs: Mapping[str, int]) -> list[int]:
    """Queue the run's waiting jobs whose lens needs at most ``usable`` checkpoints
    (``needs``: lens -> checkpoints it needs); their ids."""
    ready = [kind for kind, n in needs.items() if n <= usable]
    if not ready:
        return []
    with db.session() as s:
        rows = s.execute(
            sa.update(Job)
            .where(Job.run_id == run_id, Job.state == WAITING, Job.kind.in_(ready))
            .values(state="queued", progress_msg="")
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).all()
    return sorted(int(r[0]) for r in rows)


def release(db: Database, lease: Lease) -> bool:
    """Give an interrupted job back to the queue (worker stopping); False if not ours."""
    with db.session() as s:
        res = s.execute(
            sa.update(Job)
            .where(_fence(lease))
            .values(state="queued", worker_id=None, progress_msg="interrupted; queued again")
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1


def cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued, waiting or running job (a running one stops at its next heartbeat)."""
    return _move(
        session,
        job_id,
        (*ACTIVE, WAITING),
        "only queued, waiting or running jobs can be cancelled",
        state="cancelled",
        finished_at=utcnow(),
        progress_msg="cancelled",
    )


def retry(session: Session, job_id: int) -> Job:
    """Queue a failed, cancelled or not-applicable job again (the last to check again, say
    after the run's task changed), with a fresh attempt budget."""
    return _move(
        session,
        job_id,
        ("failed", "cancelled", "not_applicable"),
        "only failed, cancelled or not-applicable jobs can be retried",
        state="queued",
        attempts=0,
        worker_id=None,
        error=None,
        progress=0.0,
        progress_msg="",
        started_at=None,
        finished_at=None,
        heartbeat_at=None,
    )


def _move(
    session: Session, job_id: int, from_states: tuple[str, ...], refusal: str, **values: object
) -> Job:
    """Set ``values`` on the job if (atomically) it is in one of ``from_states``."""
    job = get_existing(session, Job, job_id, "job")
    res = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.state.in_(from_states))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    if res.rowcount != 1:
        raise Conflict(f"job {job_id} is {job.state}; {refusal}")
    return job


def requeue_stale(db: Database, stale_after_s: float, max_attempts: int) -> list[int]:
    """Requeue running jobs whose heartbeat is older than ``stale_after_s``.

    Jobs that already used ``max_attempts`` are failed instead. Each row is moved by its own
    conditional UPDATE, so concurrent sweepers requeue a job once. Returns requeued ids.
    """
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    stale = (Job.state == "running", Job.heartbeat_at < cutoff)
    requeued: list[int] = []
    with db.session() as s:
        rows = s.execute(sa.select(Job.id, Job.attempts).where(*stale)).all()
    for job_id, attempts in rows:
        with db.session() as s:
            if attempts >= max_attempts:
                s.execute(
                    sa.update(Job)
                    .where(Job.id == job_id, Job.attempts == attempts, *stale)
                    .values(
                        state="failed",
                        finished_at=utcnow(),
                        error=f"worker lost (no heartbeat for {stale_after_s:g}s) "
                        f"on each of {attempts} attempt(s)",
                    )
                    .execution_options(synchronize_session=False)
                )
                continue
            res = s.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.attempts == attempts, *stale)
                .values(
                    state="queued",
                    worker_id=None,
                    progress_msg=f"requeued: worker lost on attempt {attempts}",
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                requeued.append(job_id)
    return requeued


def owner_gone(worker_id: str | None, claimed_at: datetime | None) -> bool:
    """The worker that holds a job was a process on this host that no longer runs.

    Worker ids are ``host:pid:device:nonce`` (``runner.make_worker_id``). The owner is gone
    when its pid is dead, or now belongs to a process started after the claim (pid reuse).
    Another host's workers are never judged from here (they may be alive): False.
    """
    if not worker_id:
        return False
    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        started = psutil.Process(int(pid_text)).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # no access to it: someone else's live process
        return False
    if claimed_at is None:
        return False
    claimed = claimed_at if claimed_at.tzinfo else claimed_at.replace(tzinfo=UTC)
    return started > claimed.timestamp() + 1.0  # the pid was reused by a later process


def requeue_orphaned(db: Database, max_attempts: int) -> list[int]:
    """At start-up: requeue running jobs whose worker process on this host is gone.

    After a ``kill -9`` of ``phaseboard up`` its jobs still look alive (a recent
    heartbeat) for up to ``stale_after_s``; their owner is known dead, so take them back
    now. Fenced on (state, worker_id, attempts) like every move of a running job; a job that
    used ``max_attempts`` fails instead, as in ``requeue_stale``.
    """
    with db.session() as s:
        rows = s.execute(
            sa.select(Job.id, Job.attempts, Job.worker_id, Job.started_at).where(
                Job.state == "running"
            )
        ).all()
    moved: list[int] = []
    for job_id, attempts, worker_id, started_at in rows:
        if not owner_gone(worker_id, started_at):
            continue
        fence = (
            Job.id == job_id,
            Job.state == "running",
            Job.worker_id == worker_id,
            Job.attempts == attempts,
        )
        if attempts >= max_attempts:
            values: dict[str, Any] = {
                "state": "failed",
                "finished_at": utcnow(),
                "error": f"worker process ended (killed?) on each of {attempts} attempt(s)",
            }
        else:
            values = {
                "state": "queued",
                "worker_id": None,
                "progress_msg": f"requeued: worker process ended on attempt {attempts}",
            }
        with db.session() as s:
            res = s.execute(
                sa.update(Job)
                .where(*fence)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1 and values["state"] == "queued":
                moved.append(job_id)
    return moved


def queued_all(db: Database) -> list[tuple[int, str, str]]:
    """Every queued job as ``(id, device, kind)`` (the Celery sweep re-sends these)."""
    with db.session() as s:
        rows = s.execute(sa.select(Job.id, Job.device, Job.kind).where(Job.state == "queued"))
        return [(int(i), str(d), str(k)) for i, d, k in rows]


TRACEBACK_SEP = "\n\n"
"""Between a job error's message and its traceback (``split_error`` takes them apart)."""


def split_error(text: str | None) -> tuple[str | None, str | None]:
    """A stored job error as ``(message, traceback or None)``.

    The API shows the message to anyone and the traceback (server paths, code) only to a
    caller holding the API token (``server.api.jobs``); pages show the message only.
    """
    if text is None:
        return None, None
    message, sep, tb = text.partition(TRACEBACK_SEP + "Traceback (most recent call last):")
    if not sep:
        if '\n  File "' in text:  # cut by ERROR_MAX to its tail: all of it is traceback
            return text.strip().splitlines()[-1], text
        return text, None
    return message, tb and "Traceback (most recent call last):" + tb
