"""Checkpoints: streaming upload, listing, download.

An upload is staged (streamed to a temp file while hashed), validated from that file in a
worker thread, and only then committed: blob renamed into place, then the row inserted. A
crash at any point therefore leaves either no row, or a row whose blob is complete.

Validation finds the weights (``analysis.checkpoints.prepare_checkpoint``: nesting, wrapper
prefix), checks them against the run's task model, and records the key mapping on the row.
A torch file is stored as a safetensors file of its weights alone (optimizer state and the
like are dropped); a safetensors file is stored as uploaded. Weights equal to another step's
of the same run are stored once and the lower step is flagged (``duplicate_of_step``,
``server.store.series_checks``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from phaseboard.analysis.checkpoints import (
    CheckpointError,
    KeyMapping,
    LoadLimits,
    PreparedCheckpoint,
    prepare_checkpoint,
    write_safetensors,
)
from phaseboard.server import read
from phaseboard.server.db import Database, get_existing
from phaseboard.server.deps import RunDep, SessionDep, WriteAuth
from phaseboard.server.errors import BadCheckpoint, BadInput, Conflict
from phaseboard.server.models import Checkpoint, Run
from phaseboard.server.schemas import CheckpointOut, DbId, StepInt
from phaseboard.server.series import MAX_STEP
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore, StagedBlob
from phaseboard.server.store.commit import commit_blob_with_row
from phaseboard.server.store.series_checks import reflag_duplicates
from phaseboard.server.task_checks import check_task_config
from phaseboard.server.uploads import check_content_length, receive_upload, upload_body

log = logging.getLogger(__name__)
_STEP: TypeAdapter[int] = TypeAdapter(StepInt)
router = APIRouter(tags=["checkpoints"])

_UPLOAD_BODY = upload_body(
    "safetensors or torch.save state_dict file",
    "step",
    {"type": "integer", "minimum": 0, "maximum": MAX_STEP},
)


def checkpoint_out(ckpt: Checkpoint, job_ids: list[int] | None = None) -> CheckpointOut:
    out = CheckpointOut.model_validate(ckpt)
    out.mapping = KeyMapping.from_dict(ckpt.key_mapping).describe()
    out.download_url = f"/api/checkpoints/{ckpt.id}/download"
    out.job_ids = job_ids or []
    return out


def _parse_step(raw: str | None) -> int:
    """The form's ``step`` by the API's one rule for steps (``schemas.StepInt``)."""
    if raw is None or not raw.strip():
        raise BadInput("form field 'step' (the training step of this checkpoint) is missing")
    try:
        return _STEP.validate_python(raw.strip())
    except ValidationError as exc:
        err = exc.errors()[0]
        bound = {"greater_than_equal": ">= {ge}", "less_than_equal": "<= {le}"}.get(err["type"])
        msg = err["msg"].removeprefix("Value error, ")
        if bound is not None:
            msg = f"must be {bound.format(**err.get('ctx', {}))}, got {raw.strip()}"
        raise BadInput(f"step: {msg}") from None


def _run_for_upload(db: Database, run_id: int) -> Run:
    with db.session() as session:
        return read.get_run(session, run_id)


def _step_taken(db: Database, run_id: int, step: int) -> bool:
    with db.session() as session:
        q = select(Checkpoint.id).where(Checkpoint.run_id == run_id, Checkpoint.step == step)
        return session.scalar(q) is not None


def _duplicate_step(run_id: int, step: int) -> Conflict:
    return Conflict(f"run {run_id} already has a checkpoint at step {step}; nothing was stored")


def load_limits(settings: Settings) -> LoadLimits:
    return LoadLimits(
        max_objects=settings.checkpoint_max_objects,
        max_depth=settings.checkpoint_max_depth,
        max_inflated_bytes=settings.checkpoint_max_inflated_mb * 1024 * 1024,
        max_seconds=settings.checkpoint_max_inspect_s,
        max_tensors=settings.checkpoint_max_tensors,
    )


@lru_cache(maxsize=64)
def _expected_shapes(
    task: str, config_json: str, allowed: tuple[str, ...]
) -> dict[str, tuple[int, ...]] | None:
    from phaseboard.analysis.tasks import FactoryNotAllowed, get_task

    try:
        return get_task(task, json.loads(config_json), allowed_factories=allowed).expected_shapes()
    except FactoryNotAllowed as exc:  # stored before the allow-list, or the list changed
        raise BadInput(f"the run's task_config: {exc}; nothing was stored") from None
    except Exception:  # noqa: BLE001 - e.g. a factory installed on the workers only
        log.warning("cannot build task %r here; uploads are not checked against it", task)
        return None


def expected_shapes(run: Run, settings: Settings) -> dict[str, tuple[int, ...]] | None:
    """The run's model ``{name: shape}`` (cached per task config), or None without a task.

    The model is built here (on the meta device, else for real), so a ``torch_module``
    factory must pass the same allow-list as at run creation (``server.task_checks``)."""
    if not run.task:
        return None
    check_task_config(settings, run.task, run.task_config or {})
    config_json = json.dumps(run.task_config or {}, sort_keys=True)
    return _expected_shapes(run.task, config_json, settings.model_factory_patterns)


def _validate(
    path: Path, expected: dict[str, tuple[int, ...]] | None, limits: LoadLimits
) -> PreparedCheckpoint:
    try:
        return prepare_checkpoint(path, expected, limits=limits)
    except CheckpointError as exc:
        raise BadCheckpoint(f"{exc}; nothing was stored") from exc


def _weights_blob(store: BlobStore, weights: dict[str, Any]) -> StagedBlob:
    """The weights alone, as a safetensors file staged in the store."""
    return store.stage_written(lambda fh: write_safetensors(weights, fh))


def _store(
    db: Database,
    store: BlobStore,
    staged: StagedBlob,
    run_id: int,
    step: int,
    prepared: PreparedCheckpoint,
) -> Checkpoint:
    """Commit the blob, then insert the row and flag equal weights (one transaction); a
    blob this call added is removed again if that fails (``commit_blob_with_row``)."""
    info, mapping = prepared.info, prepared.mapping

    def insert(session: Session) -> Checkpoint:
        ckpt = Checkpoint(
            run_id=run_id,
            step=step,
            sha256=staged.sha256,
            size=staged.size,
            format=info.format or "unknown",
            n_params=info.n_params,
            n_tensors=info.n_tensors,
            status="flagged" if info.non_finite else "ok",
            error=_non_finite_message(info.non_finite),
            key_mapping=None if mapping.is_identity else mapping.to_dict(),
        )
        session.add(ckpt)
        session.flush()
        reflag_duplicates(session, run_id, staged.sha256)
        return ckpt

    return commit_blob_with_row(
        db, store, staged, insert, conflict=lambda: _duplicate_step(run_id, step)
    )


def _non_finite_message(names: list[str]) -> str | None:
    if not names:
        return None
    shown = ", ".join(names[:20]) + (f" (+{len(names) - 20} more)" if len(names) > 20 else "")
    return f"non-finite values (NaN or inf) in {len(names)} tensor(s): {shown}"


def _queue_analyses(request: Request, run: Run, ckpt: Checkpoint) -> list[int]:
    if not run.task:  # saves a session; checkpoints_added applies the same rule
        return []
    try:
        return list(request.app.state.queue.checkpoints_added(run.id, [ckpt.id]))
    except Exception:  # noqa: BLE001 - the checkpoint is stored; jobs can be planned later
        log.exception("planning analyses for checkpoint %s failed", ckpt.id)
        return []


@router.post(
    "/runs/{run_id}/checkpoints",
    status_code=201,
    dependencies=[WriteAuth],
    openapi_extra=_UPLOAD_BODY,
)
async def upload_checkpoint(run_id: DbId, request: Request) -> CheckpointOut:
    """Upload one checkpoint: multipart field ``file`` and form field ``step``.

    The body is streamed to disk (memory does not grow with file size). Refused with a 4xx
    naming the problem, and nothing stored: unknown run (404), body over the limit (413),
    not multipart (415), missing/bad step or file (422), unsafe pickle, corrupt file,
    non-tensor content, a file too costly to inspect, or (for a run with a task) weights that
    do not fit the task's model, named (422), duplicate step (409). NaN/inf weights are
    stored, flagged; weights equal to another step's are stored once and the lower step
    carries ``duplicate_of_step`` (its automatic analyses are skipped). The response's
    ``key_mapping`` says where the weights were found and
    which prefix was stripped; jobs load through it. Torch files are stored as their
    weights alone (safetensors); the file's other entries are listed as dropped.
    """
    settings, db, store = request.app.state.settings, request.app.state.db, request.app.state.store
    check_content_length(request, settings.max_upload_bytes)
    run = await run_in_threadpool(_run_for_upload, db, run_id)
    upload = await receive_upload(request, store, max_bytes=settings.max_upload_bytes)
    staged = upload.staged
    assert staged is not None
    weights_only: StagedBlob | None = None
    try:
        raw_step = upload.fields.get("step", request.query_params.get("step"))
        step = _parse_step(raw_step)
        if await run_in_threadpool(_step_taken, db, run_id, step):
            raise _duplicate_step(run_id, step)
        expected = await run_in_threadpool(expected_shapes, run, settings)
        limits = load_limits(settings)
        prepared = await run_in_threadpool(_validate, staged.path, expected, limits)
        if prepared.weights is not None:
            weights_only = await run_in_threadpool(_weights_blob, store, prepared.weights)
            prepared.weights = None  # let the mmap go
        blob = weights_only or staged
        ckpt = await run_in_threadpool(_store, db, store, blob, run_id, step, prepared)
    finally:
        store.discard(staged)  # no-op once committed (the temp file was renamed)
        if weights_only is not None:
            store.discard(weights_only)
    job_ids = await run_in_threadpool(_queue_analyses, request, run, ckpt)
    return checkpoint_out(ckpt, job_ids)


@router.get("/runs/{run_id}/checkpoints")
def list_checkpoints(run: RunDep, session: SessionDep) -> list[CheckpointOut]:
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step)
    )
    return [checkpoint_out(c) for c in rows]


def _get_checkpoint(session: SessionDep, checkpoint_id: DbId) -> Checkpoint:
    return get_existing(session, Checkpoint, checkpoint_id, "checkpoint")


@router.get("/checkpoints/{checkpoint_id}")
def get_checkpoint(checkpoint_id: DbId, session: SessionDep) -> CheckpointOut:
    return checkpoint_out(_get_checkpoint(session, checkpoint_id))


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_checkpoint(checkpoint_id: DbId, request: Request, session: SessionDep) -> Response:
    """Stream the checkpoint's bytes as stored (from the blob store, whichever backend)."""
    ckpt = _get_checkpoint(session, checkpoint_id)
    store: BlobStore = request.app.state.store
    with store.open(ckpt.sha256) as fh:  # NotFound if the blob is gone
        ext = "safetensors" if _stored_as_safetensors(fh.read(9)) else "pt"
    filename = f"run{ckpt.run_id}-step{ckpt.step}.{ext}"
    path = store.local_file(ckpt.sha256)
    if path is not None:
        return FileResponse(path, media_type="application/octet-stream", filename=filename)
    return StreamingResponse(
        _blob_chunks(store, ckpt.sha256),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(ckpt.size),
        },
    )


def _blob_chunks(store: BlobStore, sha256: str, chunk: int = 4 * 1024 * 1024) -> Iterator[bytes]:
    """A remote blob in chunks (a sync generator: Starlette runs it in a thread)."""
    with store.open(sha256) as fh:
        while data := fh.read(chunk):
            yield bytes(data)


def _stored_as_safetensors(head: bytes) -> bool:
    """Torch uploads are stored as safetensors of their weights; older blobs as uploaded."""
    return len(head) == 9 and head[8:9] == b"{"


@router.delete("/checkpoints/{checkpoint_id}", status_code=204, dependencies=[WriteAuth])
def delete_checkpoint(checkpoint_id: DbId, session: SessionDep) -> Response:
    """Delete the row (and its jobs/results); the blob stays (it may be shared) until
    ``phaseboard gc``. Steps that had the same weights are flagged again without it."""
    ckpt = _get_checkpoint(session, checkpoint_id)
    run_id, sha256 = ckpt.run_id, ckpt.sha256
    session.delete(ckpt)
    session.flush()
    reflag_duplicates(session, run_id, sha256)
    session.commit()
    return Response(status_code=204)
