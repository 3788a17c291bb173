"""Job-queue overhead: enqueue-to-start latency and jobs/s for trivial (``noop``) jobs.

Measures both engines on the same database: the local in-process pool and Celery on
Redis with one ``phaseboard worker`` subprocess (concurrency 1, like the local pool's one
thread). Latency: one job at a time, from ``enqueue`` (row already committed) to the job's
``started_at``. Throughput: N jobs planned, then announced at once; N / time to all done.
Prints figures per engine and the celery/local ratio.

    .venv/bin/python bench/queue_latency.py [--jobs 200] [--latency-samples 30] \
        [--database-url URL] [--redis-url redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phaseboard.server.db import Database  # noqa: E402
from phaseboard.server.jobs import make_queue  # noqa: E402
from phaseboard.server.jobs.base import JobQueue  # noqa: E402
from phaseboard.server.jobs.planning import plan_jobs  # noqa: E402
from phaseboard.server.migrate import upgrade  # noqa: E402
from phaseboard.server.models import Job, Run  # noqa: E402
from phaseboard.server.settings import Settings  # noqa: E402
from phaseboard.server.storage import BlobStore  # noqa: E402

_nonce = iter(range(10**9))


def plan_noops(db: Database, run_id: int, n: int) -> list[int]:
    ids: list[int] = []
    with db.session() as s:
        for _ in range(n):
            ids += plan_jobs(s, run_id, ["noop"], config={"nonce": next(_nonce)})
    return ids


def wait_done(db: Database, ids: list[int], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as s:
            left = s.scalar(sa.select(sa.func.count()).where(Job.id.in_(ids), Job.state != "done"))
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of {len(ids)} jobs not done after {timeout}s")
        time.sleep(0.01)  # the local pool shares this process's GIL: poll gently


def measure(queue: JobQueue, db: Database, run_id: int, jobs: int, samples: int) -> dict:
    wait_done(db, _announce(queue, plan_noops(db, run_id, 3)))  # warm up
    latencies = []
    for _ in range(samples):
        ids = plan_noops(db, run_id, 1)
        t0 = datetime.now(UTC)
        queue.enqueue(ids)
        wait_done(db, ids)
        with db.session() as s:
            started = s.get(Job, ids[0]).started_at
        latencies.append((started.replace(tzinfo=UTC) - t0).total_seconds() * 1000)
    ids = plan_noops(db, run_id, jobs)
    t0 = time.perf_counter()
    queue.enqueue(ids)
    wait_done(db, ids)
    elapsed = time.perf_counter() - t0
    return {
        "latency_ms_median": statistics.median(latencies),
        "latency_ms_p90": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
        "jobs_per_s": jobs / elapsed,
    }


def _announce(queue: JobQueue, ids: list[int]) -> list[int]:
    queue.enqueue(ids)
    return ids


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("phaseboard", path=str(Path(sys.executable).parent)) or "phaseboard"
    env = {
        **os.environ,
        "PHASEBOARD_QUEUE": "celery",
        "PHASEBOARD_REDIS_URL": settings.redis_url,
        "PHASEBOARD_DATABASE_URL": settings.database_url,
        "PHASEBOARD_STORAGE_DIR": str(settings.storage_dir),
        "PHASEBOARD_HOME": str(settings.home),
    }
    return subprocess.Popen(
        [exe, "worker", "--device", "cpu", "--concurrency", "1", "--loglevel", "WARNING"],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--latency-samples", type=int, default=30)
    ap.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pb-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    base = {"home": tmp, "database_url": url, "redis_url": args.redis_url}
    upgrade(Settings(**base))  # type: ignore[arg-type]
    import redis

    if redis.Redis.from_url(args.redis_url).dbsize():
        sys.exit(f"{args.redis_url} is not empty; pass --redis-url with a free DB number")

    figures: dict[str, dict] = {}
    for engine in ("local", "celery"):
        settings = Settings(**base, queue=engine)  # type: ignore[arg-type]
        db = Database(settings)
        assert settings.storage_dir is not None
        queue = make_queue(settings, db, BlobStore(settings.storage_dir))
        with db.session() as s:
            run = Run(name=f"bench-{engine}-{os.getpid()}")
            s.add(run)
            s.flush()
            run_id = run.id
        worker = None
        if engine == "celery":
            worker = start_worker(settings, tmp / "worker.log")
        else:
            queue.start()
        try:
            figures[engine] = measure(queue, db, run_id, args.jobs, args.latency_samples)
        finally:
            queue.stop()
            if worker is not None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=30)
            db.dispose()

    dialect = url.split(":", 1)[0]
    print(
        f"queue_latency: {args.jobs} noop jobs, {args.latency_samples} latency samples, {dialect}"
    )
    for engine, f in figures.items():
        print(
            f"  {engine:7s} enqueue->start median {f['latency_ms_median']:7.1f} ms"
            f"  p90 {f['latency_ms_p90']:7.1f} ms   throughput {f['jobs_per_s']:7.1f} jobs/s"
        )
    lo, ce = figures["local"], figures["celery"]
    print(
        f"  ratio celery/local: latency x{ce['latency_ms_median'] / lo['latency_ms_median']:.2f}"
        f"   throughput x{ce['jobs_per_s'] / lo['jobs_per_s']:.2f}"
    )
    redis.Redis.from_url(args.redis_url).flushdb()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
