"""Content-addressed blob store: bytes live at ``<root>/<sha[:2]>/<sha[2:4]>/<sha>``.

Writes stream into ``<root>/tmp`` while hashing, are fsynced, then renamed into place, so a
crash leaves either no blob or a complete one; the same bytes are stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from phaseboard.server.errors import BadInput, NotFound, PayloadTooLarge

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StagedBlob:
    """Bytes written to a temp file, hashed, not yet in the store."""

    path: Path
    sha256: str
    size: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where a blob lives; refuses anything but a sha256 so no request escapes the root."""
        if not _SHA256.match(sha256):
            raise BadInput(f"not a sha256 digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def open_path(self, sha256: str) -> Path:
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"blob {sha256} is missing from the store")
        return path

    def _new_temp(self) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-", suffix=".part")
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

    def commit(self, staged: StagedBlob) -> Path:
        """Atomically move a staged blob into place; a duplicate is dropped, not rewritten."""
        final = self.path_for(staged.sha256)
        try:  # a duplicate: refresh its mtime, since garbage collection spares recent blobs
            os.utime(final)
            staged.path.unlink(missing_ok=True)
            return final
        except FileNotFoundError:
            pass  # new bytes (or collected a moment ago): move ours into place
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def discard(self, staged: StagedBlob) -> None:
        staged.path.unlink(missing_ok=True)

    def clean_tmp(self, max_age_s: float = 3600.0) -> int:
        """Remove temp files left by crashed uploads (older than ``max_age_s``); returns count.

        Temp files never count as blobs, so leaving them is harmless; this only frees space.
        """
        cutoff, removed = time.time() - max_age_s, 0
        for p in self.tmp_dir.glob("upload-*.part"):
            try:
                if p.stat().st_mtime <= cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def blobs(self) -> list[str]:
        """Every sha256 in the store (a walk of the fan-out directories; for tests and GC)."""
        return sorted(
            p.name for p in self.root.glob("??/??/*") if p.is_file() and _SHA256.match(p.name)
        )

    def put_bytes(self, data: bytes) -> str:
        """Store small bytes directly (tests, the demo); returns the sha256."""
        staged = self.stage([data[i : i + CHUNK] for i in range(0, len(data), CHUNK)])
        self.commit(staged)
        return staged.sha256

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)


class _HashingSink:
    """Writes chunks to an open file, hashing and counting them, refusing past ``max_bytes``."""

    def __init__(self, fh: BinaryIO, max_bytes: int | None) -> None:
        self.fh, self.max_bytes = fh, max_bytes
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"upload exceeds the limit of {self.max_bytes // (1024 * 1024)} MB"
            )
        self.digest.update(chunk)
        self.fh.write(chunk)

    def staged(self, path: Path) -> StagedBlob:
        return StagedBlob(path, self.digest.hexdigest(), self.size)
