"""Runs list at 10,000 runs: one request of the runs page / API, SQLite and PostgreSQL.

Seeds N runs (default 10,000) with a hyperparameter config (6 keys, one nested), a summary of
4 series, statuses and tags; 10% of runs get a checkpoint and a job row. Then times, through the
real app (Starlette TestClient, so routing, validation, templates and JSON are included):

  default   GET /                (last-activity order: counts of every run needed)
  page      GET /?cols=config.lr,config.optimizer.name,summary.test_loss.min&sort=-config.lr
  filter    GET /?filter=config.lr < 1e-3 and summary.test_loss.min < 0.5&group=config.batch
  api       GET /api/runs?filter=config.lr < 1e-3&limit=200

Baseline (same run, same database): ``SELECT`` of the same run columns for all N runs with
JSON decoded (``session.execute(select(Run.id, ..., Run.config, Run.summary)).all()``), i.e.
the read any runs table over these runs has to pay. Prints median ms of each request, the
ratio to the baseline, and PASS/FAIL against the 300 ms budget.

    .venv/bin/python bench/runs_list.py [--runs 10000] [--repeat 7] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from phaseboard.server.app import create_app  # noqa: E402
from phaseboard.server.db import Database  # noqa: E402
from phaseboard.server.migrate import upgrade  # noqa: E402
from phaseboard.server.models import Checkpoint, Job, Run  # noqa: E402
from phaseboard.server.settings import Settings  # noqa: E402

BUDGET_MS = 300.0
COLS = "config.lr,config.optimizer.name,summary.test_loss.min"
REQUESTS = {
    "default": "/",
    "page": f"/?cols={COLS}&sort=-config.lr",
    "filter": (
        f"/?cols={COLS}&group=config.batch&filter=config.lr < 1e-3 and summary.test_loss.min < 0.5"
    ),
    "api": "/api/runs?filter=config.lr < 1e-3&limit=200",
}


def seed(db: Database, n: int) -> None:
    rng = random.Random(0)
    now = datetime.now(UTC)
    runs = []
    for i in range(n):
        lr = 10 ** rng.uniform(-5, -1)
        runs.append(
            {
                "name": f"sweep-{i:05d}",
                "task": "dln",
                "task_config": {},
                "tags": ["sweep"] if i % 3 else ["sweep", "best"],
                "notes": "",
                "analysis_config": {},
                "config": {
                    "lr": lr,
                    "batch": rng.choice([32, 64, 128, 256]),
                    "wd": rng.choice([0.0, 0.01, 0.1]),
                    "seed": i,
                    "warmup": rng.choice([0, 100, 1000]),
                    "optimizer": {"name": rng.choice(["adamw", "sgd"]), "beta2": 0.95},
                },
                "summary": {
                    name: {"last": v, "last_step": 1000, "min": v * 0.9, "max": v * 3}
                    for name, v in (
                        ("train_loss", rng.random()),
                        ("test_loss", rng.random()),
                        ("acc", rng.random()),
                        ("grad_norm", rng.random() * 10),
                    )
                },
                "status": rng.choice(["finished", "crashed", "running", "imported"]),
                "heartbeat_at": now - timedelta(seconds=rng.uniform(0, 600)),
                "created_at": now - timedelta(minutes=i),
                "updated_at": now - timedelta(minutes=i),
            }
        )
    with db.engine.begin() as conn:
        conn.execute(sa.insert(Run), runs)
        ids = [r for (r,) in conn.execute(sa.select(Run.id))]
        picked = ids[:: max(1, n // (n // 10 or 1))][: n // 10]
        conn.execute(
            sa.insert(Checkpoint),
            [
                {"run_id": r, "step": 0, "sha256": f"{r:064x}", "size": 1, "format": "safetensors",
                 "created_at": now}
                for r in picked
            ],
        )  # fmt: skip
        conn.execute(
            sa.insert(Job),
            [
                {"run_id": r, "kind": "metrics", "config": {}, "config_hash": "x",
                 "dedupe_key": f"{r}:-:metrics::x", "state": "done", "created_at": now}
                for r in picked
            ],
        )  # fmt: skip


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up (caches, templates, connection pool)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench(label: str, settings: Settings, n: int, repeat: int) -> bool:
    upgrade(settings)
    db = Database(settings)
    t0 = time.perf_counter()
    seed(db, n)
    print(f"\n[{label}] seeded {n} runs in {time.perf_counter() - t0:.1f} s")
    cols = (Run.id, Run.name, Run.task, Run.tags, Run.notes, Run.config, Run.summary,
            Run.status, Run.heartbeat_at, Run.created_at, Run.updated_at)  # fmt: skip

    def baseline() -> None:
        with db.session() as s:
            assert len(s.execute(sa.select(*cols)).all()) == n

    base = median_ms(baseline, repeat)
    print(f"  baseline  SELECT all runs' columns, JSON decoded: {base:7.1f} ms")
    ok = True
    with TestClient(create_app(settings, start_workers=False)) as client:
        for name, path in REQUESTS.items():

            def call(path: str = path) -> None:
                resp = client.get(path)
                assert resp.status_code == 200, resp.text[:300]

            ms = median_ms(call, repeat)
            verdict = "PASS" if ms < BUDGET_MS else "FAIL"
            ok &= ms < BUDGET_MS
            print(f"  {name:8s}  {ms:7.1f} ms  = {ms / base:4.1f} x baseline  [{verdict} < 300 ms]")
    db.dispose()
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        ok &= bench("sqlite", Settings(home=home, queue="none"), args.runs, args.repeat)
        admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
        name = f"pb_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            url = sa.make_url(args.postgres_url).set(database=name)
            settings = Settings(
                home=home / "pg",
                queue="none",
                database_url=url.render_as_string(hide_password=False),
            )
            ok &= bench("postgresql", settings, args.runs, args.repeat)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    print("\nall requests under 300 ms" if ok else "\nSOME REQUESTS OVER 300 ms")


if __name__ == "__main__":
    main()
