"""ORM tables: the SQL store is the source of truth for runs, checkpoints, jobs and results."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


# BigInteger primary keys that still autoincrement on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, list[Any]: JSON}


class Run(Base):
    """A training run: a named sequence of checkpoints of one task."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str | None] = mapped_column(String(100))
    task_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    notes: Mapped[str] = mapped_column(Text, default="")
    # Which analyses are queued for new checkpoints and their hyperparameters, e.g.
    # {"analyses": ["metrics", "llc"], "llc": {"num_chains": 4, ...}}.
    analysis_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Tracker fields (``server.tracking``): free-form hyperparameters, per-series
    # {name: {last, last_step, min, max}} kept on ingest, and the declared run status
    # (created | running | finished | crashed | imported; "running" with a stale
    # heartbeat reads as crashed).
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    status: Mapped[str] = mapped_column(String(20), default="created", server_default="created")
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class Checkpoint(Base):
    """One uploaded checkpoint; its bytes live in the blob store under ``sha256``."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoint_run_step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(20))  # "safetensors" | "torch"
    n_params: Mapped[int] = mapped_column(BigInteger, default=0)
    n_tensors: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), default="ok")  # "ok" | "flagged"
    error: Mapped[str | None] = mapped_column(Text)  # why it is flagged (e.g. NaN weights)
    # How the stored weights map onto the model's names (analysis.checkpoints.KeyMapping):
    # {"nesting": "state_dict" | None, "strip_prefix": "model.", "dropped": ["optimizer", ...]};
    # jobs apply it when loading. None: names used as stored.
    key_mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set when another step of the run holds the same weights (the same blob): the highest
    # such step, which keeps None (``server.store.series_checks``). Analyses skip these.
    duplicate_of_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="checkpoints")


class MetricPoint(Base):
    """One scalar of a logged series (train loss, accuracy, ...) at one step."""

    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("run_id", "name", "step", name="uq_metric_run_name_step"),
        # Covering: series reads are index-only scans (``server.series_store``).
        Index("ix_metric_series_values", "run_id", "name", "step", "value"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    # Unix seconds when the point was logged (client-stamped, imported, or server time).
    wall_time: Mapped[float | None] = mapped_column(Float)


class Job(Base):
    """A unit of analysis work. The queue carries only ``id``; this row holds the truth."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(40))  # metrics | llc | llc_restricted | phases
    restriction: Mapped[str] = mapped_column(String(200), default="")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    config_hash: Mapped[str] = mapped_column(String(64))
    # "{run}:{checkpoint or -}:{kind}:{restriction}:{config_hash}": identical work is done once.
    dedupe_key: Mapped[str] = mapped_column(String(400), unique=True)
    device: Mapped[str] = mapped_column(String(40), default="any")  # any | cpu | cuda
    state: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_msg: Mapped[str] = mapped_column(String(300), default="")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # SGLD chain-steps this job needed (rows x steps) and the measured throughput of the
    # batch it ran in: the jobs panel's time-to-completion estimate reads these.
    chain_steps: Mapped[float | None] = mapped_column(Float)
    chain_steps_per_s: Mapped[float | None] = mapped_column(Float)


class Result(Base):
    """What a job computed for one checkpoint (or run) and one restriction."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("job_id", "restriction", name="uq_result_job_restriction"),
        Index("ix_results_run_kind", "run_id", "kind", "step"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE")
    )
    step: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(40))
    restriction: Mapped[str] = mapped_column(String(200), default="")
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PhaseBoundary(Base):
    """A stage boundary on a run; ``manual`` ones are kept when detection reruns."""

    __tablename__ = "phase_boundaries"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(100))  # "llc", "loss:train_loss", "manual"
    kind: Mapped[str] = mapped_column(String(40))  # llc_peak | llc_trough | change_point | manual
    score: Mapped[float] = mapped_column(Float, default=0.0)
    label: Mapped[str] = mapped_column(String(200), default="")
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Share(Base):
    """A frozen view: ``/s/{slug}`` replays ``view`` (a page path with its query)."""

    __tablename__ = "shares"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(32), unique=True)
    view: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """Token data uploaded for a run (the generic tasks' train/test/subset data); its bytes
    live in the blob store under ``sha256``, like a checkpoint's."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_dataset_run_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))  # train | test | any data subset name
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(20))  # npy | safetensors | torch
    n_tokens: Mapped[int] = mapped_column(BigInteger)
    shape: Mapped[list[Any]] = mapped_column(JSON, default=list)
    dtype: Mapped[str] = mapped_column(String(20))
    max_token: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Tokenizer(Base):
    """A run's ``tokenizer.json`` (at most one), used only to show token ids as text; its
    bytes live in the blob store under ``sha256``, like a dataset's."""

    __tablename__ = "tokenizers"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), unique=True, index=True
    )
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    vocab_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
