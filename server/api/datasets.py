"""Token datasets of a run: the data the generic tasks (``hf_causal_lm``, ...) analyse on.

Uploaded once per run like a checkpoint: multipart ``name`` + ``file`` (``.npy``,
safetensors or weights-only ``torch.save`` holding an integer tensor, a 1-D stream or
(N, T) sequences), streamed into the content-addressed blob store under the upload limit,
validated without executing code, then committed. ``train`` and ``test`` are the splits;
any other name is a data subset (a data-restricted LLC). Bad input: 4xx, nothing stored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from phaseboard.analysis.checkpoints import LoadLimits
from phaseboard.analysis.tokens import TokenDataError, TokenInfo, scan_token_file
from phaseboard.server import read
from phaseboard.server.api.checkpoints import load_limits
from phaseboard.server.db import Database
from phaseboard.server.deps import RunDep, SessionDep, WriteAuth
from phaseboard.server.errors import BadInput, Conflict
from phaseboard.server.models import Dataset, Run
from phaseboard.server.schemas import DatasetOut, DbId
from phaseboard.server.store.blobs import BlobStore, StagedBlob
from phaseboard.server.store.commit import commit_blob_with_row
from phaseboard.server.uploads import check_content_length, receive_upload, upload_body

router = APIRouter(tags=["datasets"])

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

_UPLOAD_BODY = upload_body(
    ".npy, safetensors or weights-only .pt integer tensor",
    "name",
    {"type": "string", "pattern": NAME.pattern},
)


def _parse_name(raw: str | None) -> str:
    name = (raw or "").strip()
    if not name:
        raise BadInput("form field 'name' (train, test, or a data subset name) is missing")
    if not NAME.match(name):
        raise BadInput(
            f"name: {name[:40]!r} must be 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def vocab_of(task_config: dict[str, Any]) -> int | None:
    """The vocabulary size a generic task's config states, read without building a model."""
    for key, field in (("hf_config", "vocab_size"), ("tl_config", "d_vocab")):
        value = (task_config or {}).get(key, {})
        if isinstance(value, dict) and isinstance(value.get(field), int):
            return int(value[field])
    return None


def _run_and_taken(db: Database, run_id: int, name: str) -> tuple[Run, bool]:
    with db.session() as session:
        run = read.get_run(session, run_id)
        q = select(Dataset.id).where(Dataset.run_id == run_id, Dataset.name == name)
        return run, session.scalar(q) is not None


def _taken(run_id: int, name: str) -> Conflict:
    return Conflict(f"run {run_id} already has a dataset named {name!r}; nothing was stored")


def _validate(path: Path, vocab: int | None, limits: LoadLimits) -> TokenInfo:
    try:
        info = scan_token_file(path, limits)  # every bound a checkpoint upload gets
    except TokenDataError as exc:
        raise BadInput(f"{exc}; nothing was stored") from exc
    if vocab is not None and info.max_token >= vocab:
        raise BadInput(
            f"token id {info.max_token} is outside the model's vocabulary of {vocab} "
            "(task_config); nothing was stored"
        )
    return info


def _store(
    db: Database, store: BlobStore, staged: StagedBlob, run_id: int, name: str, info: TokenInfo
) -> Dataset:
    """Commit the blob, then insert the row (``commit_blob_with_row`` undoes a failure)."""

    def insert(session: Session) -> Dataset:
        row = Dataset(
            run_id=run_id,
            name=name,
            sha256=staged.sha256,
            size=staged.size,
            format=info.format,
            n_tokens=info.n_tokens,
            shape=list(info.shape),
            dtype=info.dtype,
            max_token=info.max_token,
        )
        session.add(row)
        return row

    return commit_blob_with_row(db, store, staged, insert, conflict=lambda: _taken(run_id, name))


@router.post(
    "/runs/{run_id}/datasets",
    status_code=201,
    dependencies=[WriteAuth],
    openapi_extra=_UPLOAD_BODY,
)
async def upload_dataset(run_id: DbId, request: Request) -> DatasetOut:
    """Upload token data: multipart ``name`` and ``file``.

    Refused with a 4xx and nothing stored: unknown run (404), over the upload limit (413),
    not multipart (415), missing/bad name or file, not an integer tensor, pickled code,
    ids outside the vocabulary stated in the task config (422), name taken (409).
    """
    settings, db, store = request.app.state.settings, request.app.state.db, request.app.state.store
    check_content_length(request, settings.max_upload_bytes)
    await run_in_threadpool(_run_and_taken, db, run_id, "train")  # 404 before reading a byte
    upload = await receive_upload(request, store, max_bytes=settings.max_upload_bytes)
    staged = upload.staged
    assert staged is not None
    try:
        name = _parse_name(upload.fields.get("name", request.query_params.get("name")))
        run, taken = await run_in_threadpool(_run_and_taken, db, run_id, name)
        if taken:
            raise _taken(run_id, name)
        limits = load_limits(settings)
        info = await run_in_threadpool(_validate, staged.path, vocab_of(run.task_config), limits)
        row = await run_in_threadpool(_store, db, store, staged, run_id, name, info)
    finally:
        store.discard(staged)
    return DatasetOut.model_validate(row)


@router.get("/runs/{run_id}/datasets")
def list_datasets(run: RunDep, session: SessionDep) -> list[DatasetOut]:
    rows = session.scalars(select(Dataset).where(Dataset.run_id == run.id).order_by(Dataset.name))
    return [DatasetOut.model_validate(r) for r in rows]
