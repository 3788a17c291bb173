"""Garbage collection of the blob store: remove blobs no checkpoint or result references.

Deleting a run or a checkpoint keeps its blob, since another checkpoint may hold the same
bytes; ``phaseboard gc`` frees the space later. An upload writes its blob a moment before
its checkpoint row, so only blobs untouched for ``min_age_s`` are candidates (a duplicate
upload refreshes the blob's mtime, see ``BlobStore.commit``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.db import Database
from phaseboard.server.models import Checkpoint, Dataset, Result
from phaseboard.server.storage import BlobStore

__all__ = ["GCReport", "collect_garbage"]


@dataclass(frozen=True)
class GCReport:
    """What a pass found and (unless a dry run) removed."""

    removed: list[str]
    bytes_freed: int
    kept_recent: int
    referenced: int
    temp_files_removed: int
    dry_run: bool


# Lens result kinds and the key of their values that names a blob.
RESULT_BLOB_KEYS = (
    ("learning_order", "losses_blob"),  # per-example losses, checkpoints x examples
    ("essential_dynamics", "outputs_blob"),  # outputs on the probe set, checkpoints x D
)


def result_blobs(session: Session) -> set[str]:
    """Blobs that lens results point to (``RESULT_BLOB_KEYS``)."""
    found: set[str] = set()
    for kind, key in RESULT_BLOB_KEYS:
        blob = Result.values[key].as_string()
        found |= {sha for sha in session.scalars(select(blob).where(Result.kind == kind)) if sha}
    return found


def collect_garbage(
    db: Database, store: BlobStore, min_age_s: float = 3600.0, dry_run: bool = False
) -> GCReport:
    """Remove unreferenced blobs older than ``min_age_s`` and stale upload temp files."""
    with db.session() as session:
        referenced = set(session.scalars(select(Checkpoint.sha256).distinct()))
        referenced |= set(session.scalars(select(Dataset.sha256).distinct()))
        referenced |= result_blobs(session)
    cutoff = time.time() - min_age_s
    removed: list[str] = []
    freed = recent = 0
    for sha in store.blobs():
        if sha in referenced:
            continue
        try:
            stat = store.path_for(sha).stat()
        except FileNotFoundError:
            continue
        if stat.st_mtime > cutoff:
            recent += 1
            continue
        with db.session() as session:  # re-check: an upload may have claimed it meanwhile
            if session.scalar(select(Checkpoint.id).where(Checkpoint.sha256 == sha).limit(1)):
                continue
            if session.scalar(select(Dataset.id).where(Dataset.sha256 == sha).limit(1)) or (
                sha in result_blobs(session)  # a lens job stored it meanwhile
            ):
                continue
        if not dry_run:
            store.delete(sha)
        removed.append(sha)
        freed += stat.st_size
    temps = 0 if dry_run else store.clean_tmp(min_age_s)
    return GCReport(removed, freed, recent, len(referenced), temps, dry_run)
