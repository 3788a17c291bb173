"""One way to keep an upload: commit its blob, insert its row, undo the blob if that fails.

Checkpoint and dataset uploads both end here, so both follow the same order: the row never
exists before its blob (a crash between the two leaves at most an unreferenced blob, which
``phaseboard gc`` collects), and a failed insert removes the blob again only when this call
added it and nothing else references it by then (another upload may share the bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from phaseboard.server.db import Database
from phaseboard.server.errors import PhaseboardError
from phaseboard.server.store.blobs import BlobStore, StagedBlob

__all__ = ["commit_blob_with_row", "drop_if_unreferenced"]

log = logging.getLogger(__name__)
Row = TypeVar("Row")


def commit_blob_with_row(
    db: Database,
    store: BlobStore,
    staged: StagedBlob,
    insert: Callable[[Session], Row],
    *,
    conflict: Callable[[], PhaseboardError],
) -> Row:
    """Commit ``staged``, then ``insert(session)`` (adds the row; may update others) in one
    transaction. If the insert fails, a blob this call added is removed unless referenced;
    a unique-constraint failure becomes ``conflict()`` (e.g. the step was taken meanwhile).
    """
    with store.inflight.hold(staged.sha256):  # garbage collection spares it until the row
        existed = store.exists(staged.sha256)
        store.commit(staged)
        try:
            with db.session() as session:
                row = insert(session)
                session.flush()
                session.refresh(row)
            return row
        except BaseException as exc:
            if not existed:
                drop_if_unreferenced(db, store, staged.sha256)
            if isinstance(exc, IntegrityError):
                raise conflict() from exc
            raise


def drop_if_unreferenced(db: Database, store: BlobStore, sha256: str) -> bool:
    """Delete the blob unless a checkpoint, dataset or lens result references it; best effort
    (a complete orphan blob is harmless: GC takes it later). Returns whether it was deleted."""
    from phaseboard.server.blob_gc import blob_in_use

    try:
        with db.session() as session:
            if blob_in_use(session, sha256):
                return False
        store.delete(sha256)
        return True
    except Exception:  # noqa: BLE001 - the caller is already failing for a better reason
        log.exception("could not remove orphan blob %s", sha256)
        return False
