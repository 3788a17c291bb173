"""Celery on the real Redis and PostgreSQL, with `phaseboard worker` in a subprocess."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from phaseboard.server.db import Database
from phaseboard.server.jobs import make_queue
from phaseboard.server.jobs.celery_app import CeleryQueue
from phaseboard.server.settings import Settings
from phaseboard.server.storage import BlobStore
from tests.conftest import service_missing
from tests.server.jobs.conftest import TINY_LLC, all_final, results_by_job, seed_run, wait_for

pytestmark = [
    pytest.mark.parametrize("backend", ["postgres"]),
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
]
FAST = {"heartbeat_s": 0.2, "stale_after_s": 2.0}


@pytest.fixture(scope="session")
def celery_redis_url(redis_url: str) -> Iterator[str]:
    """A Redis DB number of our own (claimed with a marker key), flushed at the end."""
    import redis

    parts = urlsplit(redis_url)
    for n in random.sample(range(1, 16), 15):
        url = urlunsplit(parts._replace(path=f"/{n}"))
        r = redis.Redis.from_url(url)
        if r.set("phaseboard:test-session", os.getpid(), nx=True, ex=3600):
            if r.dbsize() == 1:
                try:
                    yield url
                finally:
                    r.flushdb()
                return
            r.delete("phaseboard:test-session")
    service_missing("a free Redis database number", "DBs 1-15 all hold keys")


@pytest.fixture
def celery_settings(make_settings, celery_redis_url: str) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(queue="celery", redis_url=celery_redis_url, auto_analyses="llc", **FAST)


class Workers:
    """Starts `phaseboard worker` processes (own process groups) and kills them all."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings, self.log_dir = settings, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, device: str = "cpu") -> subprocess.Popen[bytes]:
        exe = shutil.which("phaseboard", path=str(Path(sys.executable).parent)) or "phaseboard"
        env = {
            **os.environ,
            "PHASEBOARD_QUEUE": "celery",
            "PHASEBOARD_REDIS_URL": self.settings.redis_url,
            "PHASEBOARD_DATABASE_URL": self.settings.database_url,
            "PHASEBOARD_STORAGE_DIR": str(self.settings.storage_dir),
            "PHASEBOARD_HOME": str(self.settings.home),
            "PHASEBOARD_HEARTBEAT_S": str(self.settings.heartbeat_s),
            "PHASEBOARD_STALE_AFTER_S": str(self.settings.stale_after_s),
        }
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [exe, "worker", "--device", device, "--loglevel", "WARNING"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def workers(celery_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    (tmp_path / "logs").mkdir()
    w = Workers(celery_settings, tmp_path / "logs")
    try:
        yield w
    finally:
        w.close()


def _queue(settings: Settings) -> tuple[CeleryQueue, Database]:
    db = Database(settings)
    assert settings.storage_dir is not None
    queue = make_queue(settings, db, BlobStore(settings.storage_dir))
    assert isinstance(queue, CeleryQueue)
    return queue, db


def test_cpu_worker_batches_llc_skips_cuda_jobs_and_ignores_duplicates(
    celery_settings: Settings, workers: Workers
) -> None:
    run_id, ckpts = seed_run(celery_settings, [1, 10, 100])
    queue, db = _queue(celery_settings)
    llc_ids = queue.checkpoints_added(run_id, ckpts)
    (cuda_id,) = queue.plan_and_enqueue(run_id, ["noop"], config={"device": "cuda"})
    (noop_id,) = queue.plan_and_enqueue(run_id, ["noop"], config={"device": "cpu", "nonce": 1})
    workers.start("cpu")
    try:
        jobs = wait_for(
            db,
            lambda js: (
                all_final([j for j in js if j.id != cuda_id])
                and any(j.kind == "phases" for j in js)
            ),
            timeout=90,
        )
    except BaseException:
        print(workers.logs())
        raise
    by_id = {j.id: j for j in jobs}
    assert all(by_id[i].state == "done" for i in [*llc_ids, noop_id]), workers.logs()
    assert by_id[cuda_id].state == "queued"  # no CUDA worker: it waits, nothing else does
    results = results_by_job(db)
    assert [results[i][0].values["batch"] for i in llc_ids] == [3, 3, 3]
    # A duplicate message for a finished job is a no-op.
    queue.enqueue(llc_ids)
    time.sleep(1.0)
    assert all(len(results_by_job(db)[i]) == 1 for i in llc_ids)
    assert {j.state for j in wait_for(db, lambda js: True) if j.id in llc_ids} == {"done"}
    db.dispose()


def test_kill_9_of_worker_mid_llc_requeues_and_finishes_with_one_result(
    celery_settings: Settings, workers: Workers
) -> None:
    # Long enough to be caught mid-run (progress is written every 0.5 s): 600 draws could
    # finish between two polls on fast BLAS kernels.
    run_id, ckpts = seed_run(celery_settings, [7], llc={**TINY_LLC, "num_draws": 6000})
    queue, db = _queue(celery_settings)
    (job_id,) = queue.checkpoints_added(run_id, ckpts)
    first = workers.start("cpu")
    try:
        (job,) = wait_for(
            db, lambda js: js[0].state == "running" and js[0].progress > 0.05, timeout=60
        )
    except BaseException:
        print(workers.logs())
        raise
    assert job.progress_msg.startswith("chain draws")
    workers.kill9(first)
    workers.start("cpu")
    try:
        jobs = wait_for(db, lambda js: all_final(js), timeout=120)
    except BaseException:
        print(workers.logs())
        raise
    llc = next(j for j in jobs if j.id == job_id)
    assert llc.state == "done" and llc.attempts == 2 and llc.worker_id != job.worker_id
    assert len(results_by_job(db)[job_id]) == 1
    db.dispose()


def test_broker_down_keeps_jobs_queued_in_sql(make_settings) -> None:
    settings = make_settings(queue="celery", redis_url="redis://127.0.0.1:1/0")
    run_id, _ = seed_run(settings, [1])
    queue, db = _queue(settings)
    queue.app.conf.broker_connection_timeout = 0.5
    queue.app.conf.task_publish_retry = False
    (job_id,) = queue.plan_and_enqueue(run_id, ["noop"])  # logs the failure, does not raise
    assert [j.state for j in wait_for(db, lambda js: True)] == ["queued"]
    assert queue._resend_needed.is_set()
    db.dispose()
