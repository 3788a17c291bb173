"""What a lens handler gets and may raise: the job context and the shared helpers.

A lens's handler (``server.lenses``) gets a ``JobContext`` per job (the job row's fields,
the worker's device, the blob store and a ``progress(done, total, message)`` callback) and
returns a list of ``{"restriction": str, "values": dict}``. Besides succeeding it may raise:

- ``JobFailed``: the job cannot succeed (a bad checkpoint, an unknown task): ``failed``;
- ``NotApplicable``: the lens does not apply to the run's task: ``not_applicable``, with
  the reason, once for the run (not a failure);
- ``WaitForCheckpoints``: the run has too few checkpoints yet: ``waiting`` until more
  arrive (not a failure);
- ``JobLost`` (raised by ``progress``): the job was cancelled or the worker is stopping.

Analysis code is imported inside functions, so the API process never imports torch just to
plan jobs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from phaseboard.server.db import Database
from phaseboard.server.jobs.token_data import attach_token_data
from phaseboard.server.models import Checkpoint, Run
from phaseboard.server.store.blobs import BlobStore

Progress = Callable[[int, int, str], None]
ResultRows = list[dict[str, Any]]


class JobFailed(Exception):
    """A job that cannot succeed (bad checkpoint, unknown task): failed, not retried."""


class JobLost(Exception):
    """Raised by ``progress``: the job was cancelled/reassigned, or the worker is stopping."""


class NotApplicable(Exception):
    """The lens does not apply to this run's task; the message says why."""


class WaitForCheckpoints(Exception):
    """The run has fewer usable checkpoints than the lens needs; it waits for more."""

    def __init__(self, needed: int, have: int) -> None:
        self.needed, self.have = needed, have
        super().__init__(waiting_message(needed, have))


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def waiting_message(needed: int, have: int) -> str:
    """What a lens waits for: "waiting for a 2nd checkpoint" (one short), else how many."""
    if have == needed - 1:
        return f"waiting for a {ordinal(needed)} checkpoint"
    return f"waiting for {needed - have} more checkpoints (needs {needed}, has {have})"


@dataclass
class JobContext:
    job_id: int
    run_id: int
    checkpoint_id: int | None
    kind: str
    config: dict[str, Any]
    device: str
    db: Database
    store: BlobStore
    progress: Progress
    # Memory budget of one vectorised LLC batch (None: the device's default).
    memory_mb: int | None = None
    # ``package.module:function`` patterns a torch_module task's factory may match besides
    # the installed entry points (``settings.model_factories``).
    allowed_factories: tuple[str, ...] = ()
    # Independent sampler calls a job may run at once (threads): the cores of a CPU worker
    # pool, which a job that the rest of a run waits for (a calibration) has to itself.
    parallel_calls: int = 1
    # Filled lazily by the helpers below.
    _cache: dict[str, Any] = field(default_factory=dict)

    def run(self) -> Run:
        if "run" not in self._cache:
            with self.db.session() as s:
                run = s.get(Run, self.run_id)
                if run is None:
                    raise JobFailed(f"run {self.run_id} no longer exists")
                s.expunge(run)
            self._cache["run"] = run
        return self._cache["run"]

    def task(self) -> Any:
        if "task" not in self._cache:
            from phaseboard.analysis.tasks import get_task

            run = self.run()
            if not run.task:
                raise JobFailed(f"run {run.name!r} has no task")
            try:
                task = get_task(
                    run.task, run.task_config or {}, allowed_factories=self.allowed_factories
                )
                attach_token_data(task, self.db, self.store, self.run_id)  # generic tasks
                self._cache["task"] = task
            except (KeyError, ValueError, TypeError) as exc:
                raise JobFailed(f"task {run.task!r}: {exc}") from exc
        return self._cache["task"]

    def model(self) -> Any:
        """The task's model with this job's checkpoint loaded, on ``device``."""
        from phaseboard.analysis.tasks import CheckpointMismatch

        assert self.checkpoint_id is not None
        task = self.task()
        model = task.build_model()
        state = load_checkpoint(self.db, self.store, self.checkpoint_id, model.state_dict())
        try:
            task.load_state_dict(model, state)
        except CheckpointMismatch as exc:
            raise JobFailed(str(exc)) from exc
        return model.to(self.device)


def load_checkpoint(
    db: Database, store: BlobStore, checkpoint_id: int, expected: Any = None
) -> dict[str, Any]:
    """The checkpoint's weights under the model's names, through the key mapping recorded at
    upload; with ``expected`` (the model's names) a checkpoint uploaded before its run had a
    task gets its prefix worked out now."""
    from phaseboard.analysis.checkpoints import (
        CheckpointError,
        KeyMapping,
        apply_key_mapping,
        load_state_dict_file,
        resolve_prefix,
    )

    with db.session() as s:
        ckpt = s.get(Checkpoint, checkpoint_id)
        if ckpt is None:
            raise JobFailed(f"checkpoint {checkpoint_id} no longer exists")
        sha, mapping = ckpt.sha256, KeyMapping.from_dict(ckpt.key_mapping)
    try:
        raw = load_state_dict_file(store.open_path(sha))
        state = apply_key_mapping(raw, mapping)
    except CheckpointError as exc:
        raise JobFailed(f"checkpoint {checkpoint_id}: {exc}") from exc
    if expected is not None and set(state) != set(expected):
        prefix = resolve_prefix(raw, expected)
        state = {k[len(prefix) :]: v for k, v in raw.items()}
    return state


# --- helpers shared by lens handlers --------------------------------------------------


def single(batched: Callable[[list[JobContext]], dict[int, Any]], ctx: JobContext) -> ResultRows:
    """One job through a batch handler (a batch of one)."""
    out = batched([ctx])[ctx.job_id]
    if isinstance(out, Exception):
        raise out
    return out


def load_models(
    ctxs: list[JobContext],
) -> tuple[dict[int, ResultRows | Exception], list[Any], list[JobContext]]:
    """Each job's model; a checkpoint that fails to load fails only its own job."""
    out: dict[int, ResultRows | Exception] = {}
    models, ok = [], []
    for ctx in ctxs:
        try:
            models.append(ctx.model())
            ok.append(ctx)
        except Exception as exc:  # noqa: BLE001 - one bad checkpoint fails only its job
            out[ctx.job_id] = exc
    return out, models, ok


def shared_progress(ok: list[JobContext]) -> Progress:
    """One progress callback for a batch: a job cancelled mid-batch just drops out (its
    finish is refused); stop only when none of the batch is still ours."""

    def progress(done: int, total: int, message: str) -> None:
        lost = 0
        for ctx in ok:
            try:
                ctx.progress(done, total, message)
            except JobLost:
                lost += 1
        if lost == len(ok):
            raise JobLost("every job of this batch was cancelled or reassigned")

    return progress


def finite(x: Any) -> float | None:
    """JSON (and PostgreSQL) has no NaN/inf: store None."""
    x = float(x)
    return x if math.isfinite(x) else None


def usable_checkpoint_filter(run_id: int) -> Any:
    """WHERE clause of the run's checkpoints a run-scope lens reads: all but duplicates of
    another step's weights (``server.store.series_checks``). Checkpoints flagged for
    non-finite values stay: the flag reads the file, where a buffer may hold -inf by design
    (TransformerLens's attention mask); ``at_each_checkpoint`` skips those whose loaded
    parameters are not finite."""
    return sa.and_(Checkpoint.run_id == run_id, Checkpoint.duplicate_of_step.is_(None))


def usable_checkpoints(db: Database, run_id: int) -> list[tuple[int, int]]:
    """(id, step) of the run's usable checkpoints (``usable_checkpoint_filter``), by step."""
    with db.session() as s:
        rows = s.execute(
            sa.select(Checkpoint.id, Checkpoint.step)
            .where(usable_checkpoint_filter(run_id))
            .order_by(Checkpoint.step)
        ).all()
    return [(int(i), int(st)) for i, st in rows]


def loaded_model(ctx: JobContext, model: Any, checkpoint_id: int) -> Any:
    """``model`` with checkpoint ``checkpoint_id`` loaded in place (through the task)."""
    from phaseboard.analysis.tasks import CheckpointMismatch

    try:
        ctx.task().load_state_dict(model, load_checkpoint(ctx.db, ctx.store, checkpoint_id))
    except CheckpointMismatch as exc:
        raise JobFailed(f"checkpoint {checkpoint_id}: {exc}") from exc
    return model


def npy_blob(ctx: JobContext, array: Any) -> str:
    """A float16 .npy of ``array`` in the blob store; its sha256."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array).astype(np.float16), allow_pickle=False)
    return ctx.store.put_bytes(buf.getvalue())


def at_each_checkpoint(
    ctx: JobContext,
    ckpts: list[tuple[int, int]],
    measure: Callable[[Any], Any],
    what: str,
    needed: int = 2,
) -> tuple[list[int], list[Any], list[int]]:
    """``measure(model)`` at each of the run's checkpoints, in step order, on one model
    reloaded in place: ``(steps, values, skipped steps)``. A checkpoint whose parameters are
    not all finite is skipped (its measure would be NaN); with fewer than ``needed`` left
    the lens waits (``WaitForCheckpoints``: a lens over training needs a path)."""
    import torch

    if len(ckpts) < needed:
        raise WaitForCheckpoints(needed, len(ckpts))
    model = ctx.task().build_model().to(ctx.device)
    steps: list[int] = []
    out: list[Any] = []
    skipped: list[int] = []
    for k, (ckpt_id, step) in enumerate(ckpts):
        ctx.progress(k, len(ckpts), f"{what} at checkpoint {k + 1}/{len(ckpts)}")
        loaded = loaded_model(ctx, model, ckpt_id)
        if not all(bool(torch.isfinite(p).all()) for p in loaded.parameters()):
            skipped.append(step)
            continue
        steps.append(step)
        out.append(measure(loaded))
    if len(out) < needed:
        raise WaitForCheckpoints(needed, len(out))
    return steps, out, skipped
