"""A run's tokenizer: the ``tokenizer.json`` the views decode token ids with.

At most one per run; a new upload replaces the old one. It is only ever parsed to decode
(``analysis.tokenizer.parse_tokenizer``: the ``tokenizers`` library reads the JSON, no code
is loaded), under ``PHASEBOARD_MAX_TOKENIZER_MB``, and stored like a dataset: the blob is
committed, then the row written, nothing kept on error. A byte-level vocabulary needs no file:
``task_config["tokenizer"] = "bytes"``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from phaseboard.analysis.tokenizer import ParsedTokenizer, TokenizerError, parse_tokenizer
from phaseboard.server import read
from phaseboard.server.db import Database
from phaseboard.server.deps import SessionDep, WriteAuth
from phaseboard.server.errors import BadInput, Conflict, NotFound, PayloadTooLarge
from phaseboard.server.models import Tokenizer
from phaseboard.server.schemas import DbId, TokenizerOut
from phaseboard.server.store.blobs import BlobStore, StagedBlob
from phaseboard.server.store.commit import commit_blob_with_row
from phaseboard.server.uploads import check_content_length, receive_upload

router = APIRouter(tags=["tokenizer"])

SETTING = "PHASEBOARD_MAX_TOKENIZER_MB"
_FILE = {
    "type": "string",
    "format": "binary",
    "description": "a Hugging Face tokenizer.json (as tokenizer.save or save_pretrained writes it)",
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {"file": _FILE}}
            }
        },
    }
}


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the tokenizer file exceeds the limit of {max_bytes // (1024 * 1024)} MB "
        f"({SETTING}); nothing was stored"
    )


def _check_run(db: Database, run_id: int) -> None:
    with db.session() as session:
        read.get_run(session, run_id)  # 404 for an unknown run


def _validate(path: Path) -> ParsedTokenizer:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(
            "not a tokenizer.json: the file is not UTF-8 text; nothing was stored"
        ) from None
    try:
        return parse_tokenizer(text)
    except TokenizerError as exc:
        raise BadInput(f"not a usable tokenizer.json: {exc}; nothing was stored") from None


def _store(
    db: Database, store: BlobStore, staged: StagedBlob, run_id: int, parsed: ParsedTokenizer
) -> Tokenizer:
    """Commit the blob, then replace the run's row (``commit_blob_with_row`` undoes a failure)."""

    def insert(session: Session) -> Tokenizer:
        session.execute(delete(Tokenizer).where(Tokenizer.run_id == run_id))
        row = Tokenizer(
            run_id=run_id, sha256=staged.sha256, size=staged.size, vocab_size=parsed.vocab_size
        )
        session.add(row)
        return row

    def conflict() -> Conflict:
        return Conflict(f"run {run_id}'s tokenizer was replaced meanwhile; nothing was stored")

    return commit_blob_with_row(db, store, staged, insert, conflict=conflict)


@router.put(
    "/runs/{run_id}/tokenizer",
    status_code=201,
    dependencies=[WriteAuth],
    openapi_extra=_UPLOAD_BODY,
)
async def upload_tokenizer(run_id: DbId, request: Request) -> TokenizerOut:
    """Store the run's ``tokenizer.json`` (multipart ``file``), replacing any before it.

    Refused with a 4xx and nothing stored: unknown run (404), over the size limit (413),
    not multipart (415), not a tokenizer.json the ``tokenizers`` library can read (422).
    """
    settings, db, store = request.app.state.settings, request.app.state.db, request.app.state.store
    max_bytes = settings.max_tokenizer_bytes
    check_content_length(request, max_bytes, SETTING)
    await run_in_threadpool(_check_run, db, run_id)
    try:
        upload = await receive_upload(request, store, max_bytes=max_bytes)
    except PayloadTooLarge:
        raise _too_large(max_bytes) from None
    staged = upload.staged
    assert staged is not None
    try:
        parsed = await run_in_threadpool(_validate, staged.path)
        row = await run_in_threadpool(_store, db, store, staged, run_id, parsed)
    finally:
        store.discard(staged)
    return TokenizerOut.model_validate(row)


def _row(session: Session, run_id: int) -> Tokenizer:
    read.get_run(session, run_id)
    row = session.scalar(select(Tokenizer).where(Tokenizer.run_id == run_id))
    if row is None:
        raise NotFound(f"run {run_id} has no tokenizer")
    return row


@router.get("/runs/{run_id}/tokenizer")
def get_tokenizer(run_id: DbId, session: SessionDep) -> TokenizerOut:
    """The run's stored tokenizer (404 if it has none)."""
    return TokenizerOut.model_validate(_row(session, run_id))


@router.delete("/runs/{run_id}/tokenizer", status_code=204, dependencies=[WriteAuth])
def delete_tokenizer(run_id: DbId, session: SessionDep) -> Response:
    """Forget the run's tokenizer: views show token ids again once the lenses rerun. The
    blob stays until ``phaseboard gc`` (another run may hold the same bytes)."""
    session.delete(_row(session, run_id))
    session.commit()
    return Response(status_code=204)
