"""One helper keeps every upload: commit the blob, insert the row, undo the blob on failure —
unless something references it by then (checkpoints and datasets alike)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from phaseboard.server.db import Database
from phaseboard.server.errors import Conflict
from phaseboard.server.models import Checkpoint, Dataset, Run
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore, open_blob_store
from phaseboard.server.store.commit import commit_blob_with_row


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, settings: Settings) -> BlobStore:
    if request.param == "local":
        return open_blob_store(settings)
    return open_blob_store(request.getfixturevalue("s3_settings"))


@pytest.fixture
def db(settings: Settings):  # type: ignore[no-untyped-def]
    database = Database(settings)
    with database.session() as s:
        s.add(Run(name="r"))
    yield database
    database.dispose()


def _run_id(db: Database) -> int:
    with db.session() as s:
        return s.query(Run).one().id


def _dataset(run_id: int, sha: str, name: str = "train") -> Dataset:
    return Dataset(run_id=run_id, name=name, sha256=sha, size=3, format="npy", n_tokens=3,
                   shape=[3], dtype="uint16", max_token=2)  # fmt: skip


def test_row_is_inserted_after_its_blob(db: Database, store: BlobStore) -> None:
    staged = store.stage([b"tokens"])
    seen: list[bool] = []

    def insert(session: Session) -> Dataset:
        seen.append(store.exists(staged.sha256))  # the blob is there before the row
        row = _dataset(_run_id(db), staged.sha256)
        session.add(row)
        return row

    row = commit_blob_with_row(db, store, staged, insert, conflict=lambda: Conflict("taken"))
    assert seen == [True] and row.id is not None and store.blobs() == [staged.sha256]


def test_a_failed_insert_removes_a_blob_it_added(db: Database, store: BlobStore) -> None:
    staged = store.stage([b"doomed"])

    def insert(session: Session) -> Dataset:
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        commit_blob_with_row(db, store, staged, insert, conflict=lambda: Conflict("taken"))
    assert store.blobs() == [] and not staged.path.exists()


def test_a_failed_insert_keeps_a_blob_another_upload_claimed_meanwhile(
    db: Database, store: BlobStore
) -> None:
    """The old dataset path deleted without looking: a checkpoint that committed the same
    bytes between our commit and our failure lost its blob."""
    staged = store.stage([b"shared bytes"])
    rid = _run_id(db)

    def insert(session: Session) -> Dataset:
        with db.session() as other:  # another request stores a checkpoint of the same bytes
            other.add(Checkpoint(run_id=rid, step=1, sha256=staged.sha256, size=12,
                                 format="safetensors"))  # fmt: skip
        raise RuntimeError("this upload fails after all")

    with pytest.raises(RuntimeError):
        commit_blob_with_row(db, store, staged, insert, conflict=lambda: Conflict("taken"))
    assert store.blobs() == [staged.sha256]  # the checkpoint's blob survives


def test_a_unique_clash_is_the_callers_conflict_and_an_existing_blob_stays(
    db: Database, store: BlobStore
) -> None:
    rid = _run_id(db)
    first = store.stage([b"tokens"])
    commit_blob_with_row(
        db,
        store,
        first,
        lambda s: _add(s, _dataset(rid, first.sha256)),
        conflict=lambda: Conflict("x"),
    )
    again = store.stage([b"tokens"])
    with pytest.raises(Conflict, match="name taken"):
        commit_blob_with_row(
            db,
            store,
            again,
            lambda s: _add(s, _dataset(rid, again.sha256)),  # same (run, name): unique clash
            conflict=lambda: Conflict("name taken"),
        )
    assert store.blobs() == [first.sha256]  # it existed before: never removed


def _add(session: Session, row: Dataset) -> Dataset:
    session.add(row)
    return row
