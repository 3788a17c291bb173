"""Turn "run these lenses on these checkpoints" into job rows, never the same work twice.

What a lens is and needs comes from its declaration in the lens registry
(``server.lenses``): its scope, config builder, checkpoint needs and rerun rule.

A job is identified by ``dedupe_key = "{run}:{checkpoint or -}:{lens}:{tag}:{hash}"`` where
``hash`` is the sha256 of the job's canonical-JSON config and ``tag`` says which state of the
run a run-scope job reads: a fingerprint of the run's checkpoints (``rerun="checkpoints"``:
it reruns as checkpoints arrive) or of the results of the lenses that feed stage boundaries
(``rerun="results"``). Rows are inserted with ``INSERT ... ON CONFLICT (dedupe_key) DO
NOTHING`` (SQLite and PostgreSQL both speak it), then read back by key, so planning the same
work twice returns the existing job ids.

A run-scope lens that needs more usable checkpoints than the run has is planned in state
``waiting`` ("waiting for a 2nd checkpoint"); ``JobQueue.checkpoints_added`` queues it when
they arrive. A lens whose newest job on the run ended ``not_applicable`` after the run and
its datasets last changed is not planned again: planning returns that job.

Calibration first (``auto_calibrate``, the server's ``settings.auto_calibrate``): on a run
with no LLC step size or localization of its own (``needs_calibration``), the lenses that use
the run's LLC settings are planned ``waiting`` ("waiting for the LLC calibration"); the
calibration itself is queued once the run's checkpoints have settled and its recommendation
becomes the run's settings (``server.jobs.auto_calibration``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.db import get_existing
from phaseboard.server.errors import BadInput, NotFound
from phaseboard.server.jobs.handlers import usable_checkpoint_filter, waiting_message
from phaseboard.server.lenses._registry import (
    Lens,
    UnknownLens,
    all_lenses,
    auto_lens_names,
    get_lens,
    lens_names,
    phase_feeding_names,
)
from phaseboard.server.models import Checkpoint, Dataset, Job, Result, Run, utcnow
from phaseboard.server.store.series_checks import duplicate_ids

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
# Over DEFAULT_LLC for the tasks whose examples are token sequences: a minibatch of 8
# sequences (512 tokens at 64 a sequence) rather than 64. An SGLD row holds one
# minibatch's activations (an attention pattern per head, the logits over the vocabulary):
# 64 sequences of a 2-layer GPT-2 of 120k parameters kept 82 MB per row and stepped 8x
# slower than 16; at 16 a call of one checkpoint's 12 rows took 700 MB, so two workers with
# the server passed 2 GB. A layer's heads sample as one pass of heads x chains rows.
#
# And ``dtype`` "auto": bfloat16 where the worker's device computes it natively (float32
# master weights), else float32 (``analysis.llc.config.fast_dtype``). A language model's step
# is its matmuls, which bfloat16 runs about twice as fast on such a CPU; the estimates follow
# the float32 chains to bfloat16's resolution (tests/analysis/test_dtypes.py). The small
# built-in tasks' steps are per-op overhead, where it buys nothing.
# TransformerLens computes parts of its forward in its config's float32 and refuses
# bfloat16 weights, so it samples in float32.
TASK_LLC_DEFAULTS: dict[str, dict[str, Any]] = {
    "hf_causal_lm": {"batch_size": 8, "dtype": "auto"},
    "transformer_lens": {"batch_size": 8},  # its float32 internals refuse bfloat16 weights
}
# The calibration grid when a request names none (docs: "Calibration").
DEFAULT_CALIBRATION: dict[str, Any] = {
    "lrs": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
    "localizations": [1.0, 10.0, 100.0, 1000.0],
    "n_betas": None,
}
# The automatic calibration's grid: six settings, each with its lr/2 and localization/2
# checks, on three checkpoints, so it costs about what the LLCs of 18 checkpoints do. Weak
# localizations only (a strong pull shrinks the estimate; the rule takes the weakest ok one)
# and the step sizes between under-mixing and leaving the basin on the generic tasks' small
# language models (a 2-layer GPT-2 at n_beta 82: at lr 1e-5 still rising after 40 draws,
# 1e-3 above chance loss).
AUTO_CALIBRATION: dict[str, Any] = {
    "lrs": [3e-5, 1e-4, 3e-4],
    "localizations": [1.0, 10.0],
    "n_betas": None,
}
# What LLC-settings jobs of a run that waits for its automatic calibration say.
CALIBRATION_WAIT = "waiting for the LLC calibration"
# ``analysis_config`` keys: the automatic calibration's outcome (set once it ran), and a
# run's own off-switch (``"auto_calibrate": false``: the defaults, uncalibrated).
CALIBRATION_RECORD = "llc_calibration"
AUTO_CALIBRATE_KEY = "auto_calibrate"


@dataclass
class PlanContext:
    """What a lens's config builder sees: the run, the request, the checkpoints planned."""

    session: Session
    run: Run
    override: Mapping[str, Any]  # the request's config (e.g. {"llc": {...}, "restrictions"})
    checkpoint_ids: list[int]  # the checkpoints this plan covers, by step
    requested_checkpoints: bool  # the request named them (else: all of the run's)
    auto_calibrate: bool = False  # the server calibrates runs without LLC settings first

    def run_config(self, key: str) -> dict[str, Any]:
        """The run's ``analysis_config[key]`` as a dict ({} if absent)."""
        return dict((self.run.analysis_config or {}).get(key) or {})

    def run_config_value(self, key: str) -> Any:
        return (self.run.analysis_config or {}).get(key)


def llc_settings_hash(cfg: Mapping[str, Any]) -> str:
    """The LLC series an estimate belongs to: its SGLD settings, whatever it restricts."""
    return config_hash({k: v for k, v in cfg.items() if k not in ("restrictions", "device")})


def default_llc(task: str | None) -> dict[str, Any]:
    """The LLC defaults for a run of ``task`` (``DEFAULT_LLC`` < ``TASK_LLC_DEFAULTS``)."""
    return {**DEFAULT_LLC, **TASK_LLC_DEFAULTS.get(task or "", {})}


def llc_settings(run: Run) -> dict[str, Any]:
    """The run's current LLC settings (defaults for its task < its ``analysis_config.llc``)."""
    cfg = {**default_llc(run.task), **((run.analysis_config or {}).get("llc") or {})}
    cfg.pop("device", None)
    return cfg


def llc_lens_names() -> list[str]:
    """Lenses whose config is the run's LLC settings (``Lens.uses_llc_settings``)."""
    return [lens.name for lens in all_lenses() if lens.uses_llc_settings]


def needs_calibration(run: Run, override: Mapping[str, Any] | None = None) -> bool:
    """Whether the run's LLC estimates wait for an automatic calibration: it has no LLC step
    size or localization of its own (``analysis_config.llc``, nor in the request
    ``override``), was not calibrated automatically before, and did not opt out."""
    cfg = run.analysis_config or {}
    if cfg.get(CALIBRATION_RECORD) is not None or cfg.get(AUTO_CALIBRATE_KEY) is False:
        return False
    own = {**(cfg.get("llc") or {}), **((override or {}).get("llc") or {})}
    return "lr" not in own and "localization" not in own


def check_llc_keys(cfg: Mapping[str, Any]) -> None:
    """Refuse unknown LLC hyperparameters when planning, not hours later in a worker."""
    try:
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


def _requested(run: Run, default: str | None) -> list[str]:
    """The lenses a run asks for as checkpoints arrive: its ``analysis_config.analyses``,
    else ``default`` (``settings.auto_analyses``: comma list), else the registry's
    automatic lenses."""
    names = (run.analysis_config or {}).get("analyses")
    if names is None:
        if default is None:
            return auto_lens_names()
        names = [k.strip() for k in default.split(",") if k.strip()]
    known = set(lens_names())
    return [k for k in names if k in known]


def auto_lenses(run: Run, default: str | None) -> list[Lens]:
    """Lenses queued for a new checkpoint of the run (those it asks for that a new
    checkpoint queues: per-checkpoint ones, and run-scope ones with ``rerun="checkpoints"``)."""
    lenses = [get_lens(name) for name in _requested(run, default)]
    return [lens for lens in lenses if lens.queued_on_checkpoint and not lens.internal]


def analyses_for_run(run: Run, default: str | None) -> list[str]:
    """Per-checkpoint lenses auto-queued for a new checkpoint of the run."""
    return [lens.name for lens in auto_lenses(run, default) if lens.scope == "checkpoint"]


def run_analyses_for_run(run: Run, default: str | None) -> list[str]:
    """Run-scope lenses re-queued as the run's checkpoints arrive."""
    return [lens.name for lens in auto_lenses(run, default) if lens.scope == "run"]


def _results_fingerprint(session: Session, run_id: int) -> str:
    row = session.execute(
        sa.select(sa.func.count(Result.id), sa.func.max(Result.id)).where(
            Result.run_id == run_id, Result.kind.in_(phase_feeding_names())
        )
    ).one()
    return f"{row[0]}-{row[1] or 0}"


def checkpoints_fingerprint(session: Session, run_id: int) -> str:
    """A short tag that changes whenever the run's checkpoints do (count and newest id)."""
    row = session.execute(
        sa.select(sa.func.count(Checkpoint.id), sa.func.max(Checkpoint.id)).where(
            Checkpoint.run_id == run_id
        )
    ).one()
    return f"c{row[0]}-{row[1] or 0}"


def _rerun_tag(session: Session, run_id: int, lens: Lens) -> str:
    """The state of the run a run-scope job reads (part of its key): see the module doc."""
    if lens.rerun == "results":
        return _results_fingerprint(session, run_id)
    if lens.rerun == "checkpoints":
        return checkpoints_fingerprint(session, run_id)
    return ""


def usable_checkpoint_count(session: Session, run_id: int) -> int:
    """Checkpoints of the run a run-scope lens reads (``usable_checkpoint_filter``)."""
    query = sa.select(sa.func.count(Checkpoint.id)).where(usable_checkpoint_filter(run_id))
    return int(session.scalar(query) or 0)


def _not_applicable_job(session: Session, run: Run, lens: str) -> int | None:
    """The lens's newest job on the run if it ended ``not_applicable`` after the run and its
    datasets last changed (a changed task or new data is checked again)."""
    row = session.execute(
        sa.select(Job.id, Job.state, Job.finished_at)
        .where(Job.run_id == run.id, Job.kind == lens)
        .order_by(Job.id.desc())
        .limit(1)
    ).first()
    if row is None or row[1] != "not_applicable" or row[2] is None:
        return None
    newest_data = session.scalar(
        sa.select(sa.func.max(Dataset.created_at)).where(Dataset.run_id == run.id)
    )
    decided = _aware(row[2])
    changed = [_aware(t) for t in (run.updated_at, newest_data) if t is not None]
    return int(row[0]) if all(decided > t for t in changed) else None


def _aware(when: Any) -> Any:
    from datetime import UTC

    return when if when.tzinfo else when.replace(tzinfo=UTC)


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


def resolve_lenses(names: Iterable[str]) -> list[Lens]:
    """The registered lenses named (in order, once each); ``BadInput`` names unknown ones."""
    names = list(dict.fromkeys(names))
    try:
        return [get_lens(name) for name in names]
    except UnknownLens:
        unknown = [n for n in names if n not in set(lens_names())]
        raise BadInput(
            f"unknown lens(es): {', '.join(unknown)}; known: {', '.join(lens_names())}"
        ) from None


def plan_jobs(
    session: Session,
    run_id: int,
    kinds: Iterable[str],
    checkpoint_ids: Iterable[int] | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    auto_calibrate: bool = False,
) -> list[int]:
    """Insert (or find) the jobs of the lenses ``kinds`` on the given checkpoints; job ids.

    ``checkpoint_ids=None`` means every checkpoint of the run. Checkpoints flagged as
    duplicates of a later step's weights are skipped unless ``config["include_duplicates"]``.
    ``auto_calibrate``: LLC-settings lenses of a run that ``needs_calibration`` are planned
    ``waiting`` for the calibration (see the module doc). The caller commits.
    """
    run = get_existing(session, Run, run_id, "run")
    lenses = resolve_lenses(kinds)
    needs_task = [lens.name for lens in lenses if lens.needs_task]
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
    if not (config or {}).get("include_duplicates"):  # the same weights as a later step
        skip = duplicate_ids(session, run_id)
        ckpts = [c for c in ckpts if c not in skip]

    device = str((config or {}).get("device") or "any")
    if device not in ("any", "cpu", "cuda"):
        raise BadInput("device must be any, cpu or cuda")
    usable: int | None = None
    rows: list[dict[str, Any]] = []
    known: list[int] = []  # ids decided without a row to insert (not applicable)
    hold = auto_calibrate and needs_calibration(run, config)
    for lens in lenses:
        plan = PlanContext(
            session, run, dict(config or {}), list(ckpts), checkpoint_ids is not None, hold
        )
        cfg = lens.config(plan) if lens.config is not None else {}
        digest = config_hash(cfg)
        if lens.needs_task and (na := _not_applicable_job(session, run, lens.name)) is not None:
            known.append(na)
            continue
        state, message = "queued", ""
        if hold and lens.uses_llc_settings:  # replanned with the calibrated settings
            state, message = "waiting", CALIBRATION_WAIT
        if lens.scope == "run":
            targets: list[int | None] = [None]
            tag = _rerun_tag(session, run_id, lens)
            if lens.min_checkpoints > 0:
                usable = usable_checkpoint_count(session, run_id) if usable is None else usable
                if usable < lens.min_checkpoints:
                    state, message = "waiting", waiting_message(lens.min_checkpoints, usable)
        else:
            targets, tag = list(ckpts), ""
        for ckpt in targets:
            key = f"{run_id}:{ckpt if ckpt is not None else '-'}:{lens.name}:{tag}:{digest}"
            rows.append(
                {
                    "run_id": run_id,
                    "checkpoint_id": ckpt,
                    "kind": lens.name,
                    "restriction": "",
                    "config": cfg,
                    "config_hash": digest,
                    "dedupe_key": key,
                    "device": device,
                    "state": state,
                    "attempts": 0,
                    "progress": 0.0,
                    "progress_msg": message,
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
    return ids + known


def __getattr__(name: str) -> tuple[str, ...]:
    """Lens-name lists derived from the registry when read: ``ALL_KINDS`` (every lens),
    ``CHECKPOINT_KINDS`` / ``RUN_KINDS`` (by scope), ``LLC_KINDS`` (``llc_lens_names``)."""
    if name == "ALL_KINDS":
        return tuple(lens_names())
    if name == "CHECKPOINT_KINDS":
        return tuple(lens.name for lens in all_lenses() if lens.scope == "checkpoint")
    if name == "RUN_KINDS":
        return tuple(lens.name for lens in all_lenses() if lens.scope == "run")
    if name == "LLC_KINDS":
        return tuple(llc_lens_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
