"""Setting a run's task after its checkpoints were stored: check them first, then analyse.

A run created without a task (an import that named none, an upload by hand) holds
checkpoints nothing has analysed. When a task is set later (``PATCH /api/runs/{id}``, the
run header form), every stored checkpoint must fit the task's model - the same names and
shapes an upload is checked against - or the change is refused with a 422 naming the first
checkpoint that does not fit and why, and nothing changes. Once stored, the task's automatic
lenses are queued on those checkpoints (and, the checkpoints being all there, an automatic
LLC calibration may start at once).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phaseboard.server.errors import BadInput, NotFound
from phaseboard.server.models import Checkpoint, Run
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore

log = logging.getLogger("phaseboard.api")


def task_changed(before: tuple[str | None, Any], run: Run) -> bool:
    """Whether ``run``'s task or task config differs from ``before`` (task, config)."""
    task, config = before
    return (task, json.dumps(config or {}, sort_keys=True)) != (
        run.task,
        json.dumps(run.task_config or {}, sort_keys=True),
    )


def check_stored_checkpoints(
    session: Session, settings: Settings, store: BlobStore, run: Run
) -> None:
    """Raise ``BadInput`` when a stored checkpoint of ``run`` does not fit the model of the
    task it now names (a run without checkpoints or without a task passes)."""
    if not run.task:
        return
    rows = session.execute(
        sa.select(Checkpoint.step, Checkpoint.sha256)
        .where(Checkpoint.run_id == run.id)
        .order_by(Checkpoint.step)
    ).all()
    if not rows:
        return
    from phaseboard.analysis.checkpoints import CheckpointError, check_shapes, resolve_prefix
    from phaseboard.analysis.tasks import get_task

    try:
        task = get_task(
            run.task, dict(run.task_config or {}), allowed_factories=settings.model_factory_patterns
        )
        expected = task.expected_shapes()
    except Exception as exc:  # noqa: BLE001 - any failure to build the model is the user's to fix
        raise BadInput(
            f"task {run.task!r} with this task_config cannot build its model here: {exc}; "
            "the run's checkpoints cannot be checked against it, nothing was changed"
        ) from None
    for step, sha in rows:
        try:
            shapes = _stored_shapes(store, sha)
            prefix = resolve_prefix(shapes, expected)
            check_shapes({k[len(prefix) :]: s for k, s in shapes.items()}, expected)
        except NotFound:  # a blob gone from the store: its jobs fail on their own
            log.warning("run %s: checkpoint at step %s has no blob; not checked", run.id, step)
        except CheckpointError as exc:
            raise BadInput(
                f"the run's checkpoint at step {step} does not fit task {run.task!r}: {exc}; "
                f"nothing was changed ({len(rows)} checkpoint(s) stored)"
            ) from None


def _stored_shapes(store: BlobStore, sha: str) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a stored checkpoint: from its safetensors header (no tensor is
    read); a torch file stored by an older server is loaded the safe way."""
    from safetensors import SafetensorError, safe_open

    from phaseboard.analysis.checkpoints import load_state_dict_file

    path = store.open_path(sha)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except SafetensorError:
        return {k: tuple(v.shape) for k, v in load_state_dict_file(path).items()}


def analyse_stored_checkpoints(queue: Any, run_id: int) -> list[int]:
    """Queue the automatic lenses on every stored checkpoint of a run whose task was just
    set, and start its LLC calibration (the checkpoints are all there); job ids."""
    db = queue.db
    with db.session() as s:
        query = sa.select(Checkpoint.id).where(Checkpoint.run_id == run_id)
        ids = list(s.scalars(query.order_by(Checkpoint.step)))
    if not ids:
        return []
    try:
        jobs = list(queue.checkpoints_added(run_id, ids))
        jobs += queue.run_settled(run_id)
    except Exception:  # noqa: BLE001 - the task is stored; analyses can be queued by hand
        log.exception("run %s: queueing analyses after a task change failed", run_id)
        return []
    return jobs
