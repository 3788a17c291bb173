"""Turn "analyse these checkpoints" into job rows, never the same work twice.

A job is identified by ``dedupe_key = "{run}:{checkpoint or -}:{kind}:{restriction}:{hash}"``
where ``hash`` is the sha256 of the job's canonical-JSON config. Rows are inserted with
``INSERT ... ON CONFLICT (dedupe_key) DO NOTHING`` (SQLite and PostgreSQL both speak it), then
read back by key, so planning the same work twice returns the existing job ids.

Kinds:
- ``metrics``: per checkpoint, ``analysis.metrics.checkpoint_metrics``; one result.
- ``llc``: per checkpoint, the full-model LLC; one result (restriction ``""``).
- ``llc_restricted``: per checkpoint, **one job for all restrictions** the task declares: every
  weight group goes through ``estimate_llc_restricted`` together (vectorised), every data
  subset through ``estimate_llc`` on that subset; one result per restriction, named
  ``weights:<group>`` / ``data:<subset>``. ``config["restrictions"]`` may narrow the list.
- ``phases``: per run, re-detects stage boundaries from the run's current results. Its key
  carries a fingerprint of those results, so a new result means new work and the same
  results are never analysed twice.
- ``calibrate``: per run, the (lr x localization [x n_beta]) grid of LLC settings on a few
  checkpoints in one vectorised batch (``analysis.llc.calibrate``); one result with every
  setting's estimate, verdict and mean trace, and the recommended setting. Its config
  carries the checkpoint ids (default: ``calibration_checkpoints``) and the grid.
- ``essential_dynamics``: per run, the model's outputs on the task's probe set at every
  checkpoint, PCA over checkpoints, turning points (``analysis.essential_dynamics``). Its key
  carries a fingerprint of the run's checkpoints, so it reruns as checkpoints arrive; it is
  cheap (one forward pass per checkpoint), so it is in the default automatic analyses.
- ``learning_order``: per run, the loss of each probe example (default: the first 1024
  training examples) at every checkpoint, kept as one float16 array in the blob store, and
  each example's learned-at step (``analysis.learning_order``); rerun like
  ``essential_dynamics``.
- ``noop`` / ``sleep``: trivial kinds for tests and benchmarks (never auto-planned).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.db import get_existing
from phaseboard.server.errors import BadInput, NotFound
from phaseboard.server.models import Checkpoint, Job, Result, Run, utcnow

CHECKPOINT_KINDS = ("metrics", "llc", "llc_restricted")
RUN_KINDS = ("phases", "calibrate", "essential_dynamics", "learning_order")
# Run-level kinds that may be queued automatically as checkpoints arrive.
AUTO_RUN_KINDS = ("essential_dynamics", "learning_order")
TEST_KINDS = ("noop", "sleep")
ALL_KINDS = CHECKPOINT_KINDS + RUN_KINDS + TEST_KINDS

# Small SGLD defaults that finish in seconds on a CPU for the built-in toy tasks.
DEFAULT_LLC: dict[str, Any] = {
    "lr": 1e-3,
    "n_beta": None,
    "localization": 100.0,
    "num_chains": 4,
    "num_draws": 100,
    "num_burnin_steps": 0,
    "num_steps_bw_draws": 1,
    "batch_size": 64,
    "seed": 0,
}
LLC_KINDS = ("llc", "llc_restricted")
# The calibration grid when a request names none (README "Calibration").
DEFAULT_CALIBRATION: dict[str, Any] = {
    "lrs": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
    "localizations": [1.0, 10.0, 100.0, 1000.0],
    "n_betas": None,
}


def llc_settings_hash(cfg: Mapping[str, Any]) -> str:
    """The LLC series an estimate belongs to: its SGLD settings, whatever it restricts."""
    return config_hash({k: v for k, v in cfg.items() if k not in ("restrictions", "device")})


def llc_settings(run: Run) -> dict[str, Any]:
    """The run's current LLC settings (defaults < the run's ``analysis_config.llc``)."""
    cfg = {**DEFAULT_LLC, **((run.analysis_config or {}).get("llc") or {})}
    cfg.pop("device", None)
    return cfg


def calibration_checkpoints(session: Session, run_id: int) -> list[int]:
    """Default checkpoints to calibrate on: the first settled one (the first at or after
    10 % of the last step: past the initial transient), the middle one and the last."""
    rows = session.execute(
        sa.select(Checkpoint.id, Checkpoint.step)
        .where(Checkpoint.run_id == run_id)
        .order_by(Checkpoint.step)
    ).all()
    if not rows:
        raise BadInput(f"run {run_id} has no checkpoints to calibrate on")
    last_step = rows[-1][1]
    settled = next(i for i, (_, step) in enumerate(rows) if step >= 0.1 * last_step)
    picks = {settled, (settled + len(rows) - 1) // 2, len(rows) - 1}
    return [rows[i][0] for i in sorted(picks)]


def _check_llc_keys(cfg: Mapping[str, Any]) -> None:
    """Refuse unknown LLC hyperparameters when planning, not hours later in a worker."""
    try:
        import dataclasses

        from phaseboard.analysis.llc import LLCConfig
    except ImportError:  # analysis not installed here: the worker will check
        return
    known = {f.name for f in dataclasses.fields(LLCConfig)} | {"restrictions"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise BadInput(f"unknown LLC hyperparameter(s) {unknown}; known: {sorted(known)}")


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def job_config(kind: str, run: Run, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A job's config: kind defaults < the run's ``analysis_config`` < ``override``."""
    run_cfg = run.analysis_config or {}
    override = dict(override or {})
    if kind in LLC_KINDS:
        cfg = {**DEFAULT_LLC, **(run_cfg.get("llc") or {}), **(override.get("llc") or {})}
        # Device is where a job runs, not what it computes: never part of the hash.
        cfg.pop("device", None)
        if kind == "llc_restricted":
            wanted = override.get("restrictions", run_cfg.get("restrictions"))
            if wanted is not None:
                cfg["restrictions"] = sorted(str(r) for r in wanted)
        _check_llc_keys(cfg)
        return cfg
    if kind == "calibrate":
        grid = {**DEFAULT_CALIBRATION, **(override.get("calibrate") or {})}
        cfg = {
            "llc": {**job_config("llc", run, override)},
            "lrs": [float(x) for x in grid["lrs"]],
            "localizations": [float(x) for x in grid["localizations"]],
            "n_betas": None if grid["n_betas"] is None else [float(x) for x in grid["n_betas"]],
        }
        if not cfg["lrs"] or not cfg["localizations"] or cfg["n_betas"] == []:
            raise BadInput("calibrate: lrs, localizations (and n_betas if given) may not be empty")
        unknown = sorted(set(grid) - set(DEFAULT_CALIBRATION))
        if unknown:
            raise BadInput(
                f"calibrate: unknown key(s) {unknown}; known: lrs, localizations, n_betas"
            )
        return cfg
    if kind == "metrics":
        return dict(run_cfg.get("metrics") or {}) | dict(override.get("metrics") or {})
    if kind == "sleep":
        return {"seconds": float(override.get("seconds", 1.0)), "nonce": override.get("nonce")}
    if kind == "essential_dynamics":
        return {"probe_examples": 128, **dict(run_cfg.get("essential_dynamics") or {})}
    if kind == "learning_order":
        cfg = {"probe_examples": 1024, "split": "train", "relative_threshold": 0.1}
        return {**cfg, **dict(run_cfg.get("learning_order") or {})}
    if kind == "noop":
        return {"nonce": override.get("nonce")}
    return {}


def analyses_for_run(run: Run, default: str) -> list[str]:
    """Kinds auto-queued for a new checkpoint: the run's ``analyses`` or settings' default."""
    kinds = (run.analysis_config or {}).get("analyses")
    if kinds is None:
        kinds = [k.strip() for k in default.split(",") if k.strip()]
    return [k for k in kinds if k in CHECKPOINT_KINDS]


def run_analyses_for_run(run: Run, default: str) -> list[str]:
    """Run-level kinds re-queued as checkpoints arrive (``AUTO_RUN_KINDS`` asked for)."""
    kinds = (run.analysis_config or {}).get("analyses")
    if kinds is None:
        kinds = [k.strip() for k in default.split(",") if k.strip()]
    return [k for k in kinds if k in AUTO_RUN_KINDS]


def _results_fingerprint(session: Session, run_id: int) -> str:
    row = session.execute(
        sa.select(sa.func.count(Result.id), sa.func.max(Result.id)).where(
            Result.run_id == run_id, Result.kind.in_(("llc", "metrics", "essential_dynamics"))
        )
    ).one()
    return f"{row[0]}-{row[1] or 0}"


def _checkpoints_fingerprint(session: Session, run_id: int) -> str:
    row = session.execute(
        sa.select(sa.func.count(Checkpoint.id), sa.func.max(Checkpoint.id)).where(
            Checkpoint.run_id == run_id
        )
    ).one()
    return f"c{row[0]}-{row[1] or 0}"


def _insert_ignore(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(Job).values(rows).on_conflict_do_nothing(index_elements=["dedupe_key"])
    session.execute(stmt)


def plan_jobs(
    session: Session,
    run_id: int,
    kinds: Iterable[str],
    checkpoint_ids: Iterable[int] | None = None,
    config: Mapping[str, Any] | None = None,
) -> list[int]:
    """Insert (or find) the jobs for ``kinds`` on the given checkpoints; returns job ids.

    ``checkpoint_ids=None`` means every checkpoint of the run. The caller commits.
    """
    run = get_existing(session, Run, run_id, "run")
    kinds = list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise BadInput(f"unknown analysis kind(s): {', '.join(unknown)}; known: {ALL_KINDS}")
    needs_task = [k for k in kinds if k in CHECKPOINT_KINDS + RUN_KINDS]
    if needs_task and not run.task:
        raise BadInput(f"run {run.name!r} has no task; cannot run {', '.join(needs_task)}")

    query = sa.select(Checkpoint.id).where(Checkpoint.run_id == run_id)
    if checkpoint_ids is not None:
        wanted = sorted(set(checkpoint_ids))
        query = query.where(Checkpoint.id.in_(wanted))
        found = set(session.scalars(query))
        missing = [c for c in wanted if c not in found]
        if missing:
            raise NotFound(f"run {run_id} has no checkpoint(s) {missing}")
        ckpts = wanted
    else:
        ckpts = sorted(session.scalars(query.order_by(Checkpoint.step)))

    device = str((config or {}).get("device") or "any")
    if device not in ("any", "cpu", "cuda"):
        raise BadInput("device must be any, cpu or cuda")
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        cfg = job_config(kind, run, config)
        digest = config_hash(cfg)
        if kind == "calibrate":
            cfg["checkpoint_ids"] = (
                list(ckpts)
                if checkpoint_ids is not None
                else calibration_checkpoints(session, run_id)
            )
            digest = config_hash(cfg)
        if kind in RUN_KINDS or kind in TEST_KINDS:
            targets: list[int | None] = [None]
            tag = (
                _results_fingerprint(session, run_id)
                if kind == "phases"
                else _checkpoints_fingerprint(session, run_id)
                if kind in ("essential_dynamics", "learning_order")
                else ""
            )
        else:
            targets, tag = list(ckpts), ""
        for ckpt in targets:
            key = f"{run_id}:{ckpt if ckpt is not None else '-'}:{kind}:{tag}:{digest}"
            rows.append(
                {
                    "run_id": run_id,
                    "checkpoint_id": ckpt,
                    "kind": kind,
                    "restriction": "",
                    "config": cfg,
                    "config_hash": digest,
                    "dedupe_key": key,
                    "device": device,
                    "state": "queued",
                    "attempts": 0,
                    "progress": 0.0,
                    "progress_msg": "",
                    "created_at": utcnow(),
                }
            )
    _insert_ignore(session, rows)
    keys = [r["dedupe_key"] for r in rows]
    ids: list[int] = []
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        query = sa.select(Job.dedupe_key, Job.id).where(Job.dedupe_key.in_(chunk))
        found = {key: job_id for key, job_id in session.execute(query)}
        ids.extend(found[k] for k in chunk)
    return ids
