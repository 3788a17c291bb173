"""After a kill -9 of ``phaseboard up`` its running jobs are reclaimed at start-up at once.

The killed process's jobs still have a fresh heartbeat, so the stale sweep would wait for
``stale_after_s``; their worker id names a process on this host that no longer exists, so
the pool's start takes them back immediately (``lifecycle.requeue_orphaned``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import sqlalchemy as sa

from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.local import LocalQueue
from phaseboard.server.jobs.planning import plan_jobs
from phaseboard.server.models import Job, Run, utcnow
from phaseboard.server.storage import BlobStore
from tests.server.live import live_server, settings_env


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running_jobs(db: Database, owners: list[str]) -> list[int]:
    """One noop job per owner, running under that worker id with a fresh heartbeat."""
    with db.session() as s:
        run = Run(name="r")
        s.add(run)
        s.flush()
        ids = [plan_jobs(s, run.id, ["noop"], config={"nonce": i})[0] for i in range(len(owners))]
        now = utcnow()
        for job_id, owner in zip(ids, owners, strict=True):
            s.execute(
                sa.update(Job)
                .where(Job.id == job_id)
                .values(
                    state="running", worker_id=owner, attempts=1, heartbeat_at=now, started_at=now
                )
            )
    return ids


def _states(db: Database, ids: list[int]) -> list[str]:
    with db.session() as s:
        rows = dict(s.execute(sa.select(Job.id, Job.state).where(Job.id.in_(ids))).all())
    return [rows[i] for i in ids]


def test_jobs_of_a_dead_local_worker_are_reclaimed_at_start_not_after_the_timeout(
    make_settings,
) -> None:
    settings = make_settings(queue="local", stale_after_s=3600, heartbeat_s=600)
    db = Database(settings)
    host = socket.gethostname()
    dead = f"{host}:{_dead_pid()}:cpu:abc123"
    alive = f"{host}:{os.getpid()}:cpu:def456"  # this process: alive, started before the claim
    elsewhere = f"other-host-{host}:{_dead_pid()}:cpu:aaa"  # cannot be judged from here
    ids = _running_jobs(db, [dead, alive, elsewhere])
    assert settings.storage_dir is not None
    queue = LocalQueue(settings, db, BlobStore(settings.storage_dir))
    queue.start()
    try:
        deadline = time.monotonic() + 20
        while _states(db, ids)[0] != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _states(db, ids) == ["done", "running", "running"]
    finally:
        queue.stop()
        db.dispose()


def test_a_reclaimed_job_out_of_attempts_fails_with_the_reason(make_settings) -> None:
    settings = make_settings(max_attempts=1)
    db = Database(settings)
    try:
        (job_id,) = _running_jobs(db, [f"{socket.gethostname()}:{_dead_pid()}:cpu:x"])
        assert lifecycle.requeue_orphaned(db, settings.max_attempts) == []
        with db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None and job.state == "failed"
            assert "worker process ended" in (job.error or "")
    finally:
        db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_kill_9_of_phaseboard_then_restart_takes_the_running_job_back_at_once(
    make_settings, pool
) -> None:
    """A real server process is killed mid-job; the next one resumes the job in seconds
    although its heartbeat is fresh (30 s beats, 600 s stale timeout)."""
    settings = make_settings(queue="local")
    env = {
        **settings_env(settings),
        "PHASEBOARD_QUEUE": "local",
        "PHASEBOARD_LOCAL_POOL": pool,
        "PHASEBOARD_HEARTBEAT_S": "30",
        "PHASEBOARD_STALE_AFTER_S": "600",
    }
    db = Database(settings)
    try:
        with live_server(env) as first:
            rid = httpx.post(first.url + "/api/runs", json={"name": "k"}).json()["id"]
            with db.session() as s:
                (job_id,) = plan_jobs(s, rid, ["sleep"], config={"seconds": 120})
            first_owner = _wait_owner(db, job_id, first.proc.pid)
            workers = psutil.Process(first.proc.pid).children(recursive=True)
            first.proc.kill()  # SIGKILL: no shutdown, the row still says running
            first.proc.wait()
        assert first_owner is not None
        # Its worker processes notice and end on their own: no orphan keeps taking jobs.
        assert bool(workers) is (pool == "processes")
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, alive
        with live_server(env) as second:
            started = time.monotonic()
            assert _wait_owner(db, job_id, second.proc.pid) is not None
            assert time.monotonic() - started < 20
    finally:
        db.dispose()


def _wait_owner(db: Database, job_id: int, pid: int, timeout: float = 60.0) -> str | None:
    """Wait until the job runs under a worker of server ``pid`` (a thread of it or one of
    its worker processes); its worker id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = psutil.Process(pid)
        pids = {str(p.pid) for p in [server, *server.children(recursive=True)]}
        with db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            owner = (job.worker_id or "").split(":")
            if job.state == "running" and len(owner) > 1 and owner[1] in pids:
                return job.worker_id
        time.sleep(0.2)
    return None
