"""Calibration first: a run without LLC settings of its own is calibrated before its LLCs.

Planning (``planning.plan_jobs`` with ``auto_calibrate``) leaves the LLC-settings lenses of
such a run ``waiting`` ("waiting for the LLC calibration"). This module moves them on:

1. ``start_calibration``: once the run's checkpoints have settled - its client finished, an
   import ended (``JobQueue.run_settled``), or ``settle`` finds it quiet - one ``calibrate``
   job is queued on it; its checkpoints are picked when it runs, spread over the whole
   trajectory including its sharpest part (``analysis.llc.calibration_points``).
2. ``apply_calibration`` (the calibrate lens's ``on_done``): its recommendation becomes the
   run's ``analysis_config.llc`` (lr, localization; n_beta when the grid had several), the
   outcome is recorded under ``analysis_config.llc_calibration`` (so the run is never
   calibrated automatically again) and the waiting LLC jobs are planned afresh with those
   settings. When no setting was ok on every checkpoint, the one that kept every chain in
   the basin at every checkpoint (``fallback_setting``: the weakest such localization, there
   the lr that moved least when halved) is used, and the record says so: its estimates
   carry their own verdicts. A calibration that failed, or where every setting diverged or
   left the basin somewhere, is recorded and the LLC jobs run with the defaults.
3. ``settle`` (the workers' periodic sweep): starts calibrations of runs that went quiet, and
   releases LLC jobs left waiting on a run that no longer needs a calibration (its settings
   were set by hand meanwhile).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.db import Database
from phaseboard.server.jobs.lifecycle import WAITING
from phaseboard.server.jobs.planning import (
    CALIBRATION_RECORD,
    CALIBRATION_WAIT,
    needs_calibration,
    plan_jobs,
)
from phaseboard.server.models import Checkpoint, Job, Result, Run
from phaseboard.server.settings import Settings
from phaseboard.server.tracking import effective_status

log = logging.getLogger("phaseboard.jobs")
ACTIVE = ("queued", "running", WAITING)
# Verdicts that rule a setting out even as a fallback: its chains do not sample the basin.
UNSOUND = frozenset({"diverged chains", "left the basin", "impossible"})


def fallback_setting(values: dict[str, Any]) -> dict[str, Any] | None:
    """The setting to use when a calibration recommends none: of the settings whose chains
    stayed in the basin at every calibrated checkpoint (no verdict in ``UNSOUND``), the
    weakest localization, there the smallest lr / 2 shift (else the smallest lr); None if
    every setting failed that."""
    sound = [
        e
        for e in values.get("entries") or []
        if e.get("per_checkpoint")
        and not any(c.get("verdict") in UNSOUND for c in e["per_checkpoint"])
    ]
    if not sound:
        return None
    weakest = min(float(e["localization"]) for e in sound)
    at = [e for e in sound if float(e["localization"]) == weakest]

    def key(e: dict[str, Any]) -> tuple[float, float]:
        shift = e.get("lr_shift")
        return (float(shift) if shift is not None else float("inf"), float(e["lr"]))

    best = min(at, key=key)
    return {"lr": best["lr"], "localization": best["localization"], "n_beta": best.get("n_beta")}


def _waiting_rows(session: Session, run_id: int | None = None) -> list[tuple[int, int, str, Any]]:
    """(job id, run id, lens, checkpoint id) of the jobs waiting for a calibration."""
    query = sa.select(Job.id, Job.run_id, Job.kind, Job.checkpoint_id).where(
        Job.state == WAITING, Job.progress_msg == CALIBRATION_WAIT
    )
    if run_id is not None:
        query = query.where(Job.run_id == run_id)
    return [(int(a), int(b), str(c), d) for a, b, c, d in session.execute(query)]


def _calibration_active(session: Session, run_id: int) -> bool:
    found = session.scalar(
        sa.select(Job.id)
        .where(Job.run_id == run_id, Job.kind == "calibrate", Job.state.in_(ACTIVE))
        .limit(1)
    )
    return found is not None


def start_calibration(db: Database, settings: Settings, run_id: int) -> list[int]:
    """Queue the run's automatic calibration if its LLC jobs wait for one and none is
    queued or running; the ids queued (none otherwise)."""
    with db.session() as s:
        run = s.get(Run, run_id)
        if run is None or not run.task or not needs_calibration(run):
            return []
        if not _waiting_rows(s, run_id) or _calibration_active(s, run_id):
            return []
        ids = plan_jobs(s, run_id, ["calibrate"], auto_calibrate=True)
        queued = list(s.scalars(sa.select(Job.id).where(Job.id.in_(ids), Job.state == "queued")))
    if queued:
        log.info("run %s: automatic LLC calibration queued (job %s)", run_id, queued)
    return queued


def _record(session: Session, run: Run) -> dict[str, Any] | None:
    """The outcome of the run's newest calibrate job, if it has ended."""
    job = session.scalars(
        sa.select(Job).where(Job.run_id == run.id, Job.kind == "calibrate").order_by(Job.id.desc())
    ).first()
    if job is None or job.state in ACTIVE:
        return None
    record: dict[str, Any] = {"job_id": job.id, "state": job.state, "recommended": None}
    values: dict[str, Any] = {}
    if job.state == "done":
        row = session.scalars(
            sa.select(Result).where(Result.job_id == job.id).order_by(Result.id.desc())
        ).first()
        values = dict(row.values or {}) if row is not None else {}
        record["result_id"] = None if row is None else row.id
    rec = values.get("recommended")
    fallback = None if rec else fallback_setting(values)
    if rec:
        record["recommended"] = {k: rec.get(k) for k in ("lr", "localization", "n_beta")}
        record["reason"] = values.get("reason", "")
    elif fallback is not None:
        record["recommended"] = fallback
        record["fallback"] = True
        record["reason"] = (
            f"{values.get('reason') or 'no setting was ok on every checkpoint'}. Using "
            f"lr={fallback['lr']:g}, localization={fallback['localization']:g}: of the "
            "settings whose chains stayed in the basin at every calibrated checkpoint, the "
            "weakest localization and there the lr that moved least when halved; its "
            "estimates carry their own verdicts"
        )
    elif job.state == "done":
        record["reason"] = (values.get("reason") or "no recommendation") + (
            "; the LLC uses the default settings"
        )
    else:
        why = (job.error or job.progress_msg or job.state).split("\n")[0][:300]
        record["reason"] = f"calibration {job.state}: {why}; the LLC uses the default settings"
    record["checkpoints"] = [c.get("step") for c in values.get("checkpoints") or []]
    return record


def apply_calibration(db: Database, settings: Settings, run_id: int) -> list[int]:
    """After a calibrate job on the run ended: if the run waits for its calibration, make
    the recommendation its LLC settings, record the outcome and plan the waiting LLC jobs
    with them (see the module doc); the ids planned."""
    with db.session() as s:
        run = s.get(Run, run_id)
        if run is None or not needs_calibration(run):
            return _release(s, run_id, settings) if run is not None else []
        record = _record(s, run)
        if record is None:  # another calibration is still to come
            return []
        cfg = dict(run.analysis_config or {})
        rec = record["recommended"]
        if rec is not None:
            llc = dict(cfg.get("llc") or {})
            llc.update(lr=rec["lr"], localization=rec["localization"])
            job = s.get(Job, record["job_id"])
            if job is not None and (job.config or {}).get("n_betas") and rec.get("n_beta"):
                llc["n_beta"] = rec["n_beta"]  # a grid over n_beta: its pick too
            cfg["llc"] = llc
        cfg[CALIBRATION_RECORD] = record
        run.analysis_config = cfg
        s.flush()
        log.info("run %s: %s", run_id, record.get("reason", ""))
        return _release(s, run_id, settings)


def _release(session: Session, run_id: int, settings: Settings) -> list[int]:
    """Replace the run's jobs waiting for a calibration by jobs planned with its settings
    now (same lenses, same checkpoints); the new jobs' ids."""
    rows = _waiting_rows(session, run_id)
    if not rows:
        return []
    session.execute(sa.delete(Job).where(Job.id.in_([r[0] for r in rows])))
    by_lens: dict[str, set[int]] = {}
    for _, _, kind, ckpt in rows:
        if ckpt is not None:
            by_lens.setdefault(kind, set()).add(int(ckpt))
    existing = set(session.scalars(sa.select(Checkpoint.id).where(Checkpoint.run_id == run_id)))
    ids: list[int] = []
    for kind, ckpts in sorted(by_lens.items()):
        keep = sorted(ckpts & existing)
        if keep:
            ids += plan_jobs(session, run_id, [kind], keep, auto_calibrate=settings.auto_calibrate)
    session.flush()
    return list(session.scalars(sa.select(Job.id).where(Job.id.in_(ids), Job.state == "queued")))


def settle(db: Database, settings: Settings, now: datetime | None = None) -> list[int]:
    """The periodic sweep's part: start the calibrations of runs whose checkpoints settled
    (no client heartbeat says the run is running, and its newest checkpoint is at least
    ``settings.calibration_settle_s`` old), and release jobs waiting on runs that no longer
    need a calibration. The ids queued."""
    now = now or datetime.now(UTC)
    with db.session() as s:
        run_ids = sorted({r[1] for r in _waiting_rows(s)})
        if not run_ids:
            return []
        newest = dict(
            s.execute(
                sa.select(Checkpoint.run_id, sa.func.max(Checkpoint.created_at))
                .where(Checkpoint.run_id.in_(run_ids))
                .group_by(Checkpoint.run_id)
            ).all()
        )
        due, stranded = [], []
        for run_id in run_ids:
            run = s.get(Run, run_id)
            if run is None:
                continue
            if not needs_calibration(run):
                stranded.append(run_id)
                continue
            if effective_status(run, settings.run_crashed_after_s, now) == "running":
                continue
            last = newest.get(run_id)
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=UTC)
            if last is None or now - last >= timedelta(seconds=settings.calibration_settle_s):
                due.append(run_id)
    ids: list[int] = []
    for run_id in stranded:
        with db.session() as s:
            ids += _release(s, run_id, settings)
    for run_id in due:
        ids += start_calibration(db, settings, run_id)
    return ids
