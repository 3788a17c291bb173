"""A bounded local cache of remote blobs, for readers that need a file path.

safetensors and ``torch.load`` read files; a worker analysing a checkpoint held on S3 gets a
copy here. Copies are written to a temp name while hashed, checked against the blob's
sha256, then renamed into place, so a half-fetched or corrupted copy is never used. Several
processes (Celery children, the local pool) may share one cache directory.

The bound is kept after each fetch by evicting the least recently used copies, sparing any
used in the last ``grace_s`` seconds (a reader may be about to open it): the cache may go
over ``max_bytes`` for a while when a single batch needs more than that.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from phaseboard.server.store.blobs.base import check_sha256, is_sha256

__all__ = ["BlobCache", "CorruptBlob"]


class CorruptBlob(OSError):
    """A fetched blob whose bytes do not hash to its name."""


class BlobCache:
    """``path(sha, fetch)`` -> a verified local copy, fetched by ``fetch(file)`` if needed."""

    def __init__(self, root: Path, max_bytes: int, grace_s: float = 60.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.grace_s = max_bytes, grace_s

    def path(self, sha256: str, fetch: Callable[[BinaryIO], None]) -> Path:
        final = self.root / check_sha256(sha256)
        try:
            os.utime(final)  # a hit: most recently used now
            return final
        except FileNotFoundError:
            pass
        fd, name = tempfile.mkstemp(dir=self.root, prefix="fetch-", suffix=".part")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                sink = _Hashing(fh)
                fetch(sink)  # type: ignore[arg-type]
            if sink.digest.hexdigest() != sha256:
                raise CorruptBlob(f"blob {sha256} fetched with other bytes (corrupt store?)")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.evict(keep=final)
        return final

    def evict(self, keep: Path | None = None) -> int:
        """Drop least recently used copies until under the bound; returns bytes freed."""
        entries = []
        for p in self.root.iterdir():
            if not is_sha256(p.name):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        freed, recent = 0, time.time() - self.grace_s
        for mtime, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep or mtime > recent:
                continue
            p.unlink(missing_ok=True)
            total -= size
            freed += size
        return freed

    def clean_tmp(self, max_age_s: float) -> int:
        """Remove fetch temp files older than ``max_age_s`` (left by a killed reader)."""
        cutoff, removed = time.time() - max_age_s, 0
        for p in self.root.glob("fetch-*.part"):
            try:
                if p.stat().st_mtime <= cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if is_sha256(p.name))


class _Hashing:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.digest = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)
