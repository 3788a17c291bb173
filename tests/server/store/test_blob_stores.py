"""Every blob backend keeps the same contract: content-addressed, atomic, streamed, listable.

Each test runs on the local directory store and on the S3 store against moto's real S3
server (``conftest``), both opened from settings the way the app opens them.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from phaseboard.server.errors import BadInput, NotFound, PayloadTooLarge, StorageUnavailable
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs import BlobStore, LocalBlobStore, open_blob_store
from phaseboard.server.store.blobs.cache import BlobCache, CorruptBlob
from phaseboard.server.store.blobs.s3 import S3BlobStore


@pytest.fixture
def backend() -> str:
    """The store needs no database: settings on SQLite only."""
    return "sqlite"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, make_settings) -> BlobStore:  # type: ignore[no-untyped-def]
    if request.param == "local":
        return open_blob_store(make_settings())
    return open_blob_store(request.getfixturevalue("s3_settings"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_settings_choose_the_backend_by_url(make_settings, bucket: str, tmp_path: Path) -> None:
    assert isinstance(open_blob_store(make_settings()), LocalBlobStore)
    as_url = open_blob_store(make_settings(blob_url=(tmp_path / "b").as_uri()))
    as_path = open_blob_store(make_settings(blob_url=str(tmp_path / "c")))
    assert isinstance(as_url, LocalBlobStore) and as_url.root == (tmp_path / "b").resolve()
    assert isinstance(as_path, LocalBlobStore) and as_path.root == (tmp_path / "c").resolve()
    s3 = open_blob_store(make_settings(blob_url=f"s3://{bucket}/a/b"))
    assert isinstance(s3, S3BlobStore) and (s3.bucket, s3.prefix) == (bucket, "a/b")
    with pytest.raises(BadInput, match="no blob store for gopher://"):
        open_blob_store(make_settings(blob_url="gopher://x/y"))


def test_same_bytes_stored_once_readable_by_stream_and_by_path(store: BlobStore) -> None:
    data = os.urandom(300_000)
    a = store.put_bytes(data)
    assert store.put_bytes(data) == a == _sha(data)
    assert store.blobs() == [a] and store.exists(a)
    with store.open(a) as fh:
        assert fh.read() == data
    assert store.open_path(a).read_bytes() == data
    assert list(store.tmp_dir.iterdir()) == []  # no staged file lingers
    (info,) = list(store.iterate())
    assert (info.sha256, info.size) == (a, len(data)) and abs(info.modified - time.time()) < 120


def test_streamed_put_over_several_parts_round_trips(store: BlobStore) -> None:
    """Large enough for a multipart upload on S3 (parts of 16 MiB)."""
    chunk = os.urandom(1 << 20)
    sha = store.put(chunk for _ in range(40))
    assert sha == hashlib.sha256(chunk * 40).hexdigest()
    with store.open(sha) as fh:
        fh.seek(39 << 20)
        assert fh.read() == chunk
    assert store.open_path(sha).stat().st_size == 40 << 20


def test_staging_over_the_limit_leaves_nothing(store: BlobStore) -> None:
    with pytest.raises(PayloadTooLarge):
        store.stage([b"x" * 600_000, b"x" * 600_000], max_bytes=1_000_000)
    assert list(store.tmp_dir.iterdir()) == [] and store.blobs() == []


def test_a_discarded_stage_never_becomes_a_blob(store: BlobStore) -> None:
    staged = store.stage([b"refused upload"])
    store.discard(staged)
    assert not store.exists(staged.sha256) and store.blobs() == []


def test_delete_and_missing_blobs(store: BlobStore) -> None:
    sha = store.put_bytes(b"short-lived")
    store.delete(sha)
    store.delete(sha)  # twice is fine
    assert not store.exists(sha) and store.blobs() == []
    with pytest.raises(NotFound):
        store.open_path(sha)
    with pytest.raises(NotFound):
        store.open(sha)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 63, "A" * 64, "", "touched/" + "a" * 56])
def test_only_sha256_digests_name_blobs(store: BlobStore, bad: str) -> None:
    for op in (store.exists, store.open_path, store.delete):
        with pytest.raises(BadInput):
            op(bad)


def test_a_reused_blob_counts_as_recent_for_gc(store: BlobStore) -> None:
    sha = store.put_bytes(b"old bytes")
    (first,) = list(store.iterate())
    time.sleep(1.1)  # S3 times have one-second resolution
    store.commit(store.stage([b"old bytes"]))  # a second upload of the same bytes
    (second,) = list(store.iterate())
    assert second.sha256 == sha and second.modified > first.modified
    assert store.blobs() == [sha]  # the marker is no blob


def test_s3_keys_are_fanned_out_under_the_prefix(
    s3_settings: Settings, s3_endpoint, bucket
) -> None:  # type: ignore[no-untyped-def]
    store = open_blob_store(s3_settings)
    sha = store.put_bytes(b"where does it go")
    assert s3_endpoint.blob_keys(bucket) == [f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"]
    store.delete(sha)
    assert s3_endpoint.keys(bucket) == []  # marker gone with the blob


def test_s3_store_down_is_a_typed_error_and_leaves_the_staged_file(
    make_settings, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from tests.server.live import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = open_blob_store(make_settings(blob_url="s3://nowhere/p"))
    staged = store.stage([b"bytes"])
    with pytest.raises(StorageUnavailable, match="s3://nowhere/p"):
        store.commit(staged)
    assert staged.path.exists()  # the caller decides: discard (an upload) or retry
    store.discard(staged)


def test_cache_copies_are_verified_and_bounded(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=2500, grace_s=0.0)
    blobs = [os.urandom(1000) for _ in range(4)]
    paths = [cache.path(_sha(b), lambda fh, b=b: fh.write(b)) for b in blobs]
    assert paths[-1].read_bytes() == blobs[-1]
    assert cache.size() <= 2500 and not paths[0].exists()  # least recently used went first
    with pytest.raises(CorruptBlob):
        cache.path(_sha(b"expected"), lambda fh: fh.write(b"something else"))
    assert (
        not list((tmp_path / "cache").glob("fetch-*"))
        and not (tmp_path / "cache" / _sha(b"expected")).exists()
    )


def test_s3_readers_get_their_file_from_the_cache(s3_settings: Settings) -> None:
    store = open_blob_store(s3_settings)
    assert isinstance(store, S3BlobStore)
    sha = store.put_bytes(b"weights")
    path = store.open_path(sha)
    assert path.parent == Path(s3_settings.storage_dir) / "cache"  # type: ignore[arg-type]
    path.unlink()  # evicted: fetched again
    assert store.open_path(sha).read_bytes() == b"weights"
