"""Where ``phaseboard ingest`` reads from: a local directory or any fsspec URL.

``Source`` lists a tree once (relative path -> size) and opens files as streams, so the
walk that finds checkpoints is the same for ``./runs/a``, ``s3://bucket/prefix``,
``gs://bucket/prefix`` or any other fsspec protocol. ``s3://`` and ``gs://`` are served by
obstore's fsspec adapter unless their usual packages (s3fs, gcsfs) are installed;
credentials come from the usual variables of each store (``AWS_*``, ``GOOGLE_*``).

The readers of small side files (TensorBoard events, ``trainer_state.json``, hparams) work
on a local folder: for a remote tree ``metadata_dir`` copies just those files into a
temporary folder with the same layout. Weights are never copied: they stream from the
store to the server.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["METADATA_FILES", "Source", "is_url"]

# Side files the importers read; copied locally for a remote tree (weights never are).
METADATA_FILES = re.compile(
    r"(^|/)(events\.out\.tfevents\..*|trainer_state\.json|config\.json|hparams\.ya?ml"
    r"|[^/]*\.index\.json)$"
)
READ_BLOCK = 8 * 1024 * 1024  # one ranged GET per 8 MiB of a remote checkpoint
_OBSTORE_PROTOCOLS = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs"}


def is_url(text: str) -> bool:
    """``scheme://...`` with a scheme of two or more letters (``C:\\`` stays a path)."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+)://", text)
    return bool(m)


def _filesystem(url: str) -> tuple[Any, str]:
    """An fsspec filesystem and root path for ``url``."""
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    options: dict[str, Any] = {}
    if protocol in _OBSTORE_PROTOCOLS:
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except ImportError:  # s3fs / gcsfs not installed: obstore serves the protocol
            from obstore.fsspec import register

            register(_OBSTORE_PROTOCOLS[protocol])
            cls = fsspec.get_filesystem_class(protocol)
        if cls.__module__.startswith("obstore"):
            options["client_options"] = {"allow_http": True}  # an http:// endpoint if named
    try:
        return fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise OSError(f"cannot open {url}: {exc}") from exc


class Source:
    """A tree of files to import, local (``Path``) or remote (an fsspec URL)."""

    def __init__(self, where: str | Path) -> None:
        text = str(where)
        self.label = text
        if is_url(text) and not text.startswith("file://"):
            self.fs, self.root = _filesystem(text)
            self.local_root: Path | None = None
        else:
            from fsspec.implementations.local import LocalFileSystem

            path = Path(text.removeprefix("file://")).expanduser()
            self.fs, self.root, self.local_root = LocalFileSystem(), str(path.resolve()), path
        self._files: dict[str, int] | None = None

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    def exists(self) -> bool:
        """Whether the root is a directory (a prefix holding files, on an object store)."""
        if self.local_root is not None:
            return self.local_root.is_dir()
        return bool(self.files())

    def files(self) -> dict[str, int]:
        """Every file under the root: relative POSIX path -> size in bytes (listed once).

        Raises ``OSError`` naming the source when it cannot be listed (no such bucket,
        no credentials, endpoint down)."""
        if self._files is None:
            try:
                found = self.fs.find(self.root, detail=True)
            except Exception as exc:  # noqa: BLE001 - each store raises its own kinds
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise OSError(f"cannot list {self.label}: {first[:300]}") from exc
            root = self.root.rstrip("/")
            self._files = {
                posixpath.relpath(str(info["name"]), root): int(info.get("size") or 0)
                for info in found.values()
                if info.get("type", "file") == "file"
            }
        return self._files

    def full(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def open(self, rel: str) -> IO[bytes]:
        """A binary stream of one file (ranged reads of ``READ_BLOCK`` on object stores)."""
        if self.local_root is not None:
            return self.fs.open(self.full(rel), "rb")  # type: ignore[no-any-return]
        if type(self.fs).__module__.startswith("obstore"):
            return self.fs.open(self.full(rel), "rb", buffer_size=READ_BLOCK)  # type: ignore[no-any-return]
        return self.fs.open(self.full(rel), "rb", block_size=READ_BLOCK)  # type: ignore[no-any-return]

    def read_text(self, rel: str) -> str:
        with self.open(rel) as fh:
            return fh.read().decode("utf-8")

    @contextmanager
    def metadata_dir(self) -> Iterator[Path]:
        """A local folder holding the tree's side files (the tree itself when local)."""
        if self.local_root is not None:
            yield self.local_root
            return
        tmp = Path(tempfile.mkdtemp(prefix="phaseboard-ingest-"))
        try:
            for rel in self.files():
                if METADATA_FILES.search(rel):
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with self.open(rel) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out, 1024 * 1024)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
