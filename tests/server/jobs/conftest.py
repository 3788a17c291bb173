"""Helpers for the job tests: a tiny DLN run with real checkpoints in the blob store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

from phaseboard.server.db import Database
from phaseboard.server.models import Checkpoint, Job, Result, Run
from phaseboard.server.settings import Settings
from phaseboard.server.storage import BlobStore

TINY_TASK: dict[str, Any] = {"widths": [3, 3, 2], "num_samples": 64, "num_test": 32, "true_rank": 2}
TINY_LLC: dict[str, Any] = {"num_chains": 2, "num_draws": 15, "batch_size": 32, "lr": 1e-3}


def fast_settings(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "heartbeat_s": 0.2,
        "stale_after_s": 2.0,
        "auto_analyses": "llc",
        "local_workers": 1,  # one general worker: batching is deterministic
    }
    values.update(overrides)
    return make_settings(**values)


def state_dict(seed: int, widths: list[int] | None = None) -> dict[str, torch.Tensor]:
    from phaseboard.analysis.tasks import get_task

    cfg = dict(TINY_TASK)
    if widths is not None:
        cfg["widths"] = widths
    torch.manual_seed(seed)
    return get_task("dln", cfg).build_model().state_dict()


def seed_run(
    settings: Settings,
    steps: list[int],
    *,
    llc: dict[str, Any] | None = None,
    bad_steps: tuple[int, ...] = (),
    name: str = "tiny",
) -> tuple[int, list[int]]:
    """A dln run with one checkpoint per step; ``bad_steps`` get a wrong-shaped model."""

    db = Database(settings)
    assert settings.storage_dir is not None
    store = BlobStore(settings.storage_dir)
    try:
        with db.session() as s:
            run = Run(
                name=name,
                task="dln",
                task_config=TINY_TASK,
                analysis_config={"llc": llc or TINY_LLC, "metrics": {"hutchinson_samples": 2}},
            )
            s.add(run)
            s.flush()
            weights = [
                (step, state_dict(i, [4, 3, 2] if step in bad_steps else None))
                for i, step in enumerate(steps)
            ]
            return run.id, add_checkpoints(s, store, run.id, weights)
    finally:
        db.dispose()


def add_checkpoints(
    session: Any, store: BlobStore, run_id: int, weights: Iterable[tuple[int, dict[str, Any]]]
) -> list[int]:
    """Store each ``(step, state_dict)`` as a safetensors checkpoint row of the run; ids."""
    from phaseboard.analysis.checkpoints import save_safetensors_bytes

    ids = []
    for step, sd in weights:
        data = save_safetensors_bytes(sd)
        ck = Checkpoint(
            run_id=run_id,
            step=step,
            sha256=store.put_bytes(data),
            size=len(data),
            format="safetensors",
        )
        session.add(ck)
        session.flush()
        ids.append(ck.id)
    return ids


def wait_for(
    db: Database, predicate: Callable[[list[Job]], bool], timeout: float = 60.0
) -> list[Job]:
    """Poll the jobs table until ``predicate(jobs)``; fail with the table on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as s:
            jobs = list(s.query(Job).order_by(Job.id))
        if predicate(jobs):
            return jobs
        if time.monotonic() > deadline:
            table = [(j.id, j.kind, j.state, j.attempts, j.progress_msg, j.error) for j in jobs]
            pytest.fail(f"timed out waiting for jobs: {table}")
        time.sleep(0.1)


def all_final(jobs: list[Job]) -> bool:
    return bool(jobs) and all(j.state in ("done", "failed", "cancelled") for j in jobs)


def results_by_job(db: Database) -> dict[int, list[Result]]:
    out: dict[int, list[Result]] = {}
    with db.session() as s:
        for r in s.query(Result).order_by(Result.id):
            out.setdefault(r.job_id, []).append(r)
    return out
