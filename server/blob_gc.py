"""Garbage collection of the blob store: remove blobs no checkpoint, dataset, tokenizer or
result references.

Deleting a run or a checkpoint keeps its blob, since another checkpoint may hold the same
bytes; ``phaseboard gc`` frees the space later. An upload writes its blob a moment before
its checkpoint row (a lens job a while before its result row), so a fresh unreferenced blob
may be about to be referenced. On a local blob directory the writer says so with an
in-flight marker (``server.store.inflight``): an upload holds it from the commit to the row,
a lens job pins it (spared ``min_age_s``), and a marker dies with its process; every other
unreferenced blob is collected whatever its age, so ``gc`` right after a disk-full frees
what the deleted runs held. A store shared between machines (S3) cannot see other machines'
markers: there only blobs untouched for ``min_age_s`` are candidates (a duplicate upload
touches the blob). Works on every blob
backend: it lists the store (``BlobStore.iterate``) and asks the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from phaseboard.server.db import Database
from phaseboard.server.models import Checkpoint, Dataset, Result, Tokenizer
from phaseboard.server.store.blobs import BlobStore
from phaseboard.server.store.blobs.base import BlobInfo
from phaseboard.server.store.blobs.local import LocalBlobStore

__all__ = ["GCReport", "blob_in_use", "collect_garbage"]


@dataclass(frozen=True)
class GCReport:
    """What a pass found and (unless a dry run) removed."""

    removed: list[str]
    bytes_freed: int
    kept_recent: int
    referenced: int
    temp_files_removed: int
    dry_run: bool


def result_blobs(session: Session) -> set[str]:
    """Blobs that lens results point to: the values each lens declares as blobs
    (``Lens.result_blobs`` in the lens registry)."""
    from phaseboard.server.lenses import result_blob_keys

    found: set[str] = set()
    for kind, key in result_blob_keys():
        blob = Result.values[key].as_string()
        found |= {sha for sha in session.scalars(select(blob).where(Result.kind == kind)) if sha}
    return found


def blob_in_use(session: Session, sha256: str) -> bool:
    """Whether a checkpoint, a dataset, a tokenizer or a lens result references the blob."""
    for model in (Checkpoint, Dataset, Tokenizer):
        if session.scalar(select(model.id).where(model.sha256 == sha256).limit(1)) is not None:
            return True
    return sha256 in result_blobs(session)


def _spared(markers: tuple[set[str], set[str]], info: BlobInfo, cutoff: float) -> bool:
    """Held by an upload between its commit and its row, or pinned by a live lens job and
    written after ``cutoff`` (``markers``: ``Inflight.held()``)."""
    held, pinned = markers
    return info.sha256 in held or (info.sha256 in pinned and info.modified > cutoff)


def _claimed_meanwhile(store: LocalBlobStore, info: BlobInfo, cutoff: float) -> bool:
    """An upload of the same bytes began since the listing: held now, or touched."""
    if _spared(store.inflight.held(), info, cutoff):
        return True
    try:
        return store.path_for(info.sha256).stat().st_mtime > info.modified
    except FileNotFoundError:
        return True  # gone already: nothing to do


def collect_garbage(
    db: Database, store: BlobStore, min_age_s: float = 3600.0, dry_run: bool = False
) -> GCReport:
    """Remove unreferenced blobs nobody holds in flight, and the temp files of dead uploads.

    On a local store a blob is spared while an upload holds it (commit to row) and for
    ``min_age_s`` after a live lens job pinned it; on a store shared between machines every
    unreferenced blob younger than ``min_age_s`` is spared."""
    local = isinstance(store, LocalBlobStore)
    markers = store.inflight.held() if local else (set(), set())
    with db.session() as session:
        referenced = set(session.scalars(select(Checkpoint.sha256).distinct()))
        referenced |= set(session.scalars(select(Dataset.sha256).distinct()))
        referenced |= set(session.scalars(select(Tokenizer.sha256).distinct()))
        referenced |= result_blobs(session)
    cutoff = time.time() - min_age_s
    removed: list[str] = []
    freed = recent = 0
    for info in sorted(store.iterate(), key=lambda b: b.sha256):
        if info.sha256 in referenced:
            if local and not dry_run:
                store.inflight.unpin(info.sha256)  # its row is written: no longer in flight
            continue
        if _spared(markers, info, cutoff) if local else info.modified > cutoff:
            recent += 1
            continue
        with db.session() as session:  # re-check: an upload or a lens job may have claimed it
            if blob_in_use(session, info.sha256):
                continue
        if local and _claimed_meanwhile(store, info, cutoff):
            recent += 1
            continue
        if not dry_run:
            store.delete(info.sha256)
            if local:
                store.inflight.unpin(info.sha256)
        removed.append(info.sha256)
        freed += info.size
    temps = 0 if dry_run else store.clean_tmp(min_age_s)
    return GCReport(removed, freed, recent, len(referenced), temps, dry_run)
