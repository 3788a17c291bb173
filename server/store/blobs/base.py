"""The blob-store interface: content-addressed, streamed, atomic.

A blob is named by the sha256 of its bytes. Writing is two steps so that an upload can be
checked before it is kept: ``stage`` streams bytes into a local temp file while hashing them
(memory stays flat), then ``commit`` makes them a blob in one atomic step (a rename on disk,
a completed single or multipart PUT on S3), or ``discard`` drops them. Readers either stream
(``open``) or get a local file (``open_path``: the blob itself on disk, a bounded cache copy
for remote stores) for libraries that want a path (safetensors, ``torch.load``).

Staging is local for every backend: uploads are validated from the staged file before any
byte reaches the store, so a refused upload never leaves a blob behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from phaseboard.server.errors import BadInput, PayloadTooLarge
from phaseboard.server.store.inflight import Inflight

__all__ = ["CHUNK", "BlobInfo", "BlobStore", "StagedBlob", "check_sha256", "fanout_key"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is a lowercase hex digest; refuses anything else (no path escapes)."""
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise BadInput(f"not a sha256 digest: {str(sha256)[:80]!r}")
    return sha256


def is_sha256(name: str) -> bool:
    return bool(_SHA256.match(name))


def fanout_key(sha256: str) -> str:
    """``ab/cd/abcd…``: the blob's relative name in every backend."""
    check_sha256(sha256)
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


@dataclass(frozen=True)
class StagedBlob:
    """Bytes written to a local temp file, hashed, not yet in the store."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob as a listing sees it; ``modified`` is Unix seconds of its last
    write or ``touch`` (garbage collection spares recent blobs)."""

    sha256: str
    size: int
    modified: float


class BlobStore(ABC):
    """Content-addressed blob store; backends are registered by URL scheme (``registry``)."""

    url: str
    tmp_dir: Path  # local staging directory (``stage*`` write here)

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = Path(tmp_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.inflight = Inflight(self.tmp_dir.parent / "inflight")  # what a process still needs

    # --- backend operations -------------------------------------------------------------

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""

    @abstractmethod
    def commit(self, staged: StagedBlob) -> None:
        """Make staged bytes a blob, atomically; the temp file is gone afterwards.

        A blob already stored is not written again, only ``touch``-ed.
        """

    @abstractmethod
    def touch(self, sha256: str) -> None:
        """Mark a stored blob as just used, so garbage collection spares it a while."""

    @abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """A seekable binary stream of the blob (``NotFound`` if missing); close it."""

    @abstractmethod
    def open_path(self, sha256: str) -> Path:
        """A local file holding the blob's bytes (``NotFound`` if missing).

        For a remote store this is a verified copy in a bounded local cache; read it soon,
        since the cache may evict files it has not handed out lately.
        """

    def local_file(self, sha256: str) -> Path | None:
        """The blob's own file when blobs are local files (serve it directly), else None."""
        return None

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob (a missing one is not an error)."""

    @abstractmethod
    def iterate(self) -> Iterator[BlobInfo]:
        """Every stored blob, in no particular order (a listing; for GC and tests)."""

    # --- shared: staging to local temp files --------------------------------------------

    def _new_temp(self) -> tuple[int, Path]:
        prefix = self.inflight.temp_prefix  # owned: removed at once if this process dies
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=prefix, suffix=".part")
        return fd, Path(name)

    def stage(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> StagedBlob:
        """Stream ``chunks`` to a temp file (memory stays flat), hashing as it goes."""
        fd, path = self._new_temp()
        try:
            with os.fdopen(fd, "wb") as fh:
                sink = _HashingSink(fh, max_bytes)
                for chunk in chunks:
                    sink.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return sink.staged(path)

    async def stage_async(
        self, chunks: AsyncIterable[bytes], max_bytes: int | None = None
    ) -> StagedBlob:
        """Like ``stage`` for an async byte stream (a request body); fsync runs off the loop."""
        fd, path = self._new_temp()
        try:
            with os.fdopen(fd, "wb") as fh:
                sink = _HashingSink(fh, max_bytes)
                async for chunk in chunks:
                    sink.write(chunk)
                fh.flush()
                await asyncio.to_thread(os.fsync, fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return sink.staged(path)

    def stage_written(self, write: Callable[[BinaryIO], object]) -> StagedBlob:
        """Stage what ``write(file)`` writes (a serializer), hashing as it goes."""
        fd, path = self._new_temp()
        try:
            with os.fdopen(fd, "wb") as fh:
                sink = _HashingSink(fh, None)
                write(sink)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return sink.staged(path)

    def discard(self, staged: StagedBlob) -> None:
        """Drop a staged temp file (a no-op once it was committed)."""
        staged.path.unlink(missing_ok=True)

    def put(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> str:
        """Stage and commit a stream of bytes; returns its sha256."""
        staged = self.stage(chunks, max_bytes)
        self.inflight.pin(staged.sha256)  # its row (a lens result) is written later
        try:
            self.commit(staged)
        finally:
            self.discard(staged)
        return staged.sha256

    def put_bytes(self, data: bytes) -> str:
        """Store small bytes directly (lens results, tests, the demo); returns the sha256."""
        return self.put(data[i : i + CHUNK] for i in range(0, len(data), CHUNK))

    def clean_tmp(self, max_age_s: float = 3600.0) -> int:
        """Remove temp files of uploads whose process is gone, whatever their age (their
        name says whose they are: ``store.inflight``); another machine's, and those named by
        older versions, once older than ``max_age_s``. Returns the count. Files of live
        processes stay."""
        cutoff, removed = time.time() - max_age_s, 0
        for p in self.tmp_dir.glob("upload-*.part"):
            owner = self.inflight.owner_of(p)
            try:
                if owner is not None and self.inflight.is_here(owner):
                    dead = not self.inflight.is_live(owner)
                else:  # another machine's, or named by an older version
                    dead = p.stat().st_mtime <= cutoff
                if dead:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def blobs(self) -> list[str]:
        """Every sha256 in the store, sorted (for tests and reports)."""
        return sorted(info.sha256 for info in self.iterate())

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing
        """Release what the backend holds (connections); the store is unusable afterwards."""


class _HashingSink:
    """Writes chunks to an open file, hashing and counting them, refusing past ``max_bytes``."""

    def __init__(self, fh: BinaryIO, max_bytes: int | None) -> None:
        self.fh, self.max_bytes = fh, max_bytes
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"upload exceeds the limit of {self.max_bytes // (1024 * 1024)} MB"
            )
        self.digest.update(chunk)
        self.fh.write(chunk)
        return len(chunk)

    def staged(self, path: Path) -> StagedBlob:
        return StagedBlob(path, self.digest.hexdigest(), self.size)
