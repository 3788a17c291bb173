"""Seed data for page tests: runs, metric points, results and boundaries written as rows.

Pages only read rows, so tests write the rows an analysis would have produced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sqlalchemy as sa

from phaseboard.server.db import Database
from phaseboard.server.models import Checkpoint, Job, MetricPoint, PhaseBoundary, Result, Run


@dataclass(frozen=True)
class Seeded:
    run_id: int
    other_run_id: int
    boundary_ids: list[int]


def _llc_curve(step: int) -> float:
    """Rises, peaks near step 400, dips, rises again: two stage boundaries."""
    x = math.log10(step + 1)
    return 20 + 15 * math.sin(1.6 * x) + 2 * x


def seed_runs(db: Database, *, n_ckpt: int = 20, n_points: int = 400) -> Seeded:
    """Two runs; the first has checkpoints, losses, LLC (+ restricted), boundaries, jobs."""
    with db.session() as s:
        run = Run(
            name="grokking-p53",
            task="modular_addition",
            task_config={"p": 53, "seed": 0},
            tags=["grokking", "demo"],
            notes="Weight decay 1.0; memorisation then circuit formation.",
        )
        other = Run(name="tms-5-2", task="tms", task_config={"n": 5}, tags=["tms"])
        s.add_all([run, other])
        s.flush()
        steps = [int(10 ** (1 + 3 * i / max(1, n_ckpt - 1))) for i in range(n_ckpt)]
        ckpts = []
        for i, step in enumerate(steps):
            c = Checkpoint(
                run_id=run.id,
                step=step,
                sha256=f"{i:064x}",
                size=1000 + i,
                format="safetensors",
                n_params=100,
                n_tensors=2,
            )
            s.add(c)
            ckpts.append(c)
        s.flush()
        for c in ckpts:
            x = math.log10(c.step + 1)
            s.add(
                Result(
                    run_id=run.id,
                    checkpoint_id=c.id,
                    step=c.step,
                    kind="metrics",
                    values={
                        "train_loss": 2.0 / (1 + x),
                        "test_loss": 4.0 / (1 + x * x / 4),
                        "weight_norm": {"total": 10 + x},
                    },
                )
            )
            mean = _llc_curve(c.step)
            s.add(
                Result(
                    run_id=run.id,
                    checkpoint_id=c.id,
                    step=c.step,
                    kind="llc",
                    values={
                        "mean": mean,
                        "std": 1.0 + 0.1 * x,
                        "per_chain": [mean - 1, mean + 1],
                        "init_loss": 0.1,
                        "loss_trace": [[0.1] * 50] * 2,
                        "diverged": [],
                    },
                )
            )
            for h in range(4):
                s.add(
                    Result(
                        run_id=run.id,
                        checkpoint_id=c.id,
                        step=c.step,
                        kind="llc_restricted",
                        restriction=f"blocks.0.attn.head{h}",
                        values={"mean": mean / 4 + h, "std": 0.3},
                    )
                )
        s.add_all(
            MetricPoint(run_id=run.id, name=name, step=st, value=value)
            for st in range(1, n_points * 25, 25)
            for name, value in (
                ("train_loss", 3.0 * math.exp(-st / 3000) + 0.01 * math.sin(st)),
                ("test_loss", 3.5 * math.exp(-st / 6000) + 0.05),
                ("accuracy", 1 - math.exp(-st / 4000)),
            )
        )
        boundaries = [
            PhaseBoundary(
                run_id=run.id,
                step=380.0,
                source="llc",
                kind="llc_peak",
                score=2.5,
                label="memorisation",
            ),
            PhaseBoundary(
                run_id=run.id,
                step=2900.0,
                source="loss:test_loss",
                kind="change_point",
                score=1.2,
                label="",
            ),
        ]
        s.add_all(boundaries)
        for i, state in enumerate(["done", "done", "running", "failed"]):
            s.add(
                Job(
                    run_id=run.id,
                    checkpoint_id=ckpts[i].id,
                    kind="llc",
                    config={},
                    config_hash="h",
                    dedupe_key=f"{run.id}:{ckpts[i].id}:llc::{i}",
                    state=state,
                    progress=0.4 if state == "running" else 1.0,
                    progress_msg="chain draws 80/200" if state == "running" else "",
                    error="CheckpointMismatch: fc.weight [4, 3] vs [5, 3]"
                    if state == "failed"
                    else None,
                )
            )
        s.flush()
        return Seeded(run.id, other.id, [b.id for b in boundaries])


def finish_running_jobs(db: Database) -> None:
    with db.session() as s:
        s.execute(sa.update(Job).where(Job.state == "running").values(state="done", progress=1.0))
