"""Blobs on S3 or any S3-compatible object store (AWS, GCS's S3 API, MinIO, Ceph, R2).

``PHASEBOARD_BLOB_URL=s3://bucket/prefix``; credentials, region and endpoint come from the
usual AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``, ...) or the instance's role, read by the client library
(obstore, see pyproject). Keys are ``<prefix>/<sha[:2]>/<sha[2:4]>/<sha>`` as on disk.

A commit uploads the staged file, in parallel parts past ``PART_BYTES``: the object appears
whole when the (multipart) upload completes, or not at all. A blob already stored is not
uploaded again; a tiny ``touched/<sha>`` marker records the reuse instead, since S3 cannot
refresh an object's modification time, and garbage collection takes the newer of the two.
Readers that need a file get a verified copy from a bounded local cache (``cache``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from phaseboard.server.errors import BadInput, NotFound, StorageUnavailable
from phaseboard.server.store.blobs.base import (
    BlobInfo,
    BlobStore,
    StagedBlob,
    fanout_key,
    is_sha256,
)
from phaseboard.server.store.blobs.cache import BlobCache

__all__ = ["S3BlobStore"]

PART_BYTES = 16 * 1024 * 1024  # multipart part size (S3's minimum is 5 MiB)
PART_CONCURRENCY = 8
TOUCHED = "touched/"


class S3BlobStore(BlobStore):
    """Content-addressed blobs in one bucket under one prefix."""

    def __init__(self, url: str, work_dir: Path, cache_bytes: int) -> None:
        import obstore
        from obstore.store import S3Store

        parts = urlsplit(url)
        if parts.scheme not in ("s3", "s3a") or not parts.netloc:
            raise BadInput(f"blob URL {url!r}: expected s3://bucket[/prefix]")
        self.url, self.bucket = url, parts.netloc
        self.prefix = parts.path.strip("/") or None
        self._obs = obstore
        retry: Any = {"max_retries": 4, "retry_timeout": timedelta(seconds=30)}
        # allow_http only permits an http:// endpoint someone named (MinIO or moto on a
        # private network); AWS and every https endpoint stay on TLS.
        store = S3Store(
            self.bucket,
            prefix=self.prefix,
            retry_config=retry,
            client_options={"allow_http": True},
        )
        self._store = store
        work_dir = Path(work_dir)
        super().__init__(work_dir / "tmp")
        self.cache = BlobCache(work_dir / "cache", cache_bytes)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one obstore call; a missing object raises ``FileNotFoundError``, any other
        failure ``StorageUnavailable`` naming the store."""
        from obstore.exceptions import BaseError, NotFoundError

        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, NotFoundError) as exc:
            raise FileNotFoundError(what) from exc
        except (BaseError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageUnavailable(f"blob store {self.url}: {what} failed: {first}") from exc

    def exists(self, sha256: str) -> bool:
        try:
            self._call("head", self._obs.head, self._store, fanout_key(sha256))
            return True
        except FileNotFoundError:
            return False

    def commit(self, staged: StagedBlob) -> None:
        if self.exists(staged.sha256):
            self.touch(staged.sha256)
        else:
            self._call(
                f"upload of {staged.sha256}",
                self._obs.put,
                self._store,
                fanout_key(staged.sha256),
                staged.path,
                chunk_size=PART_BYTES,
                max_concurrency=PART_CONCURRENCY,
            )
        staged.path.unlink(missing_ok=True)

    def touch(self, sha256: str) -> None:
        self._call("touch", self._obs.put, self._store, TOUCHED + fanout_key(sha256), b"")

    def open(self, sha256: str) -> BinaryIO:
        try:
            reader = self._call("read", self._obs.open_reader, self._store, fanout_key(sha256))
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is missing from the store") from None
        return _ReaderIO(reader)  # type: ignore[return-value]

    def chunks(self, sha256: str, chunk_bytes: int = 4 * 1024 * 1024) -> Iterator[bytes]:
        """The blob as a stream of byte chunks (downloads)."""
        try:
            result = self._call("read", self._obs.get, self._store, fanout_key(sha256))
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is missing from the store") from None
        for chunk in result.stream(min_chunk_size=chunk_bytes):
            yield bytes(chunk)

    def open_path(self, sha256: str) -> Path:
        def fetch(fh: BinaryIO) -> None:
            for chunk in self.chunks(sha256):
                fh.write(chunk)

        return self.cache.path(sha256, fetch)

    def delete(self, sha256: str) -> None:
        keys = [fanout_key(sha256), TOUCHED + fanout_key(sha256)]
        self._call("delete", self._obs.delete, self._store, keys)

    def iterate(self) -> Iterator[BlobInfo]:
        blobs: dict[str, BlobInfo] = {}
        touched: dict[str, float] = {}
        for meta in self._call("list", self._listing):
            path, name = str(meta["path"]), str(meta["path"]).rsplit("/", 1)[-1]
            if not is_sha256(name):
                continue
            modified = meta["last_modified"].timestamp()
            if path.startswith(TOUCHED):
                touched[name] = modified
            elif path == fanout_key(name):
                blobs[name] = BlobInfo(name, int(meta["size"]), modified)
        for sha, info in blobs.items():
            if touched.get(sha, 0.0) > info.modified:
                info = BlobInfo(sha, info.size, touched[sha])
            yield info

    def _listing(self) -> list[Any]:
        """Every object's metadata (all pages read inside one ``_call``)."""
        return [meta for page in self._obs.list(self._store, chunk_size=1000) for meta in page]

    def clean_tmp(self, max_age_s: float = 3600.0) -> int:
        return super().clean_tmp(max_age_s) + self.cache.clean_tmp(max_age_s)


class _ReaderIO(io.RawIOBase):
    """obstore's ranged reader as a standard binary file (context manager, readinto)."""

    def __init__(self, reader: Any) -> None:
        super().__init__()
        self._reader = reader

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._reader.read(len(buffer))
        n = len(data)
        memoryview(buffer)[:n] = memoryview(data).cast("B")
        return n

    def read(self, size: int = -1) -> bytes:
        return bytes(self._reader.read() if size is None or size < 0 else self._reader.read(size))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self._reader.seek(offset, whence))

    def tell(self) -> int:
        return int(self._reader.tell())

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()
