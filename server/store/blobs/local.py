"""The local-directory blob store: bytes live at ``<root>/<sha[:2]>/<sha[2:4]>/<sha>``.

Staged files live in ``<root>/tmp`` (the same filesystem), are fsynced, then renamed into
place, so a crash leaves either no blob or a complete one; the same bytes are stored once.
The default of the embedded setup (``PHASEBOARD_BLOB_URL`` unset, a path or ``file://``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from phaseboard.server.errors import NotFound
from phaseboard.server.store.blobs.base import (
    BlobInfo,
    BlobStore,
    StagedBlob,
    check_sha256,
    is_sha256,
)

__all__ = ["LocalBlobStore"]


class LocalBlobStore(BlobStore):
    """Blobs as files under one directory (shared by machines only through a shared disk)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        super().__init__(self.root / "tmp")

    def path_for(self, sha256: str) -> Path:
        """Where a blob lives; refuses anything but a sha256 so no request escapes the root."""
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def open_path(self, sha256: str) -> Path:
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"blob {sha256} is missing from the store")
        return path

    def local_file(self, sha256: str) -> Path | None:
        return self.open_path(sha256)

    def open(self, sha256: str) -> BinaryIO:
        return self.open_path(sha256).open("rb")

    def touch(self, sha256: str) -> None:
        os.utime(self.path_for(sha256))

    def commit(self, staged: StagedBlob) -> None:
        """Atomically move a staged blob into place; a duplicate is dropped, not rewritten."""
        final = self.path_for(staged.sha256)
        try:  # a duplicate: refresh its mtime, since garbage collection spares recent blobs
            self.touch(staged.sha256)
            staged.path.unlink(missing_ok=True)
            return
        except FileNotFoundError:
            pass  # new bytes (or collected a moment ago): move ours into place
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def iterate(self) -> Iterator[BlobInfo]:
        for p in self.root.glob("??/??/*"):
            if not is_sha256(p.name):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # deleted while we walked
                continue
            yield BlobInfo(p.name, st.st_size, st.st_mtime)
