"""Sharded safetensors checkpoints (``model.safetensors.index.json``) read as one file.

``MergedSafetensors`` is a read-only, seekable file object whose bytes are a single
safetensors file holding every tensor of the shards: a new header, then each tensor's bytes
copied from its shard on demand, shard by shard, in file order. Nothing is merged on disk and
memory stays at one read buffer, so ``phaseboard ingest`` streams it like any file.
"""

from __future__ import annotations

import io
import json
import posixpath
import struct
from pathlib import Path
from typing import Any

INDEX_NAME = "model.safetensors.index.json"


class ShardError(ValueError):
    """An index or shard that cannot be merged; the message names the file."""


def _shard_header(path: Path) -> tuple[dict[str, Any], int]:
    """A shard's header (validated by the real safetensors parser first) and data start."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise ShardError(f"{path.name}: {exc}") from exc
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _remote_shard_header(fs: Any, path: str) -> tuple[dict[str, Any], int]:
    """A shard's header read from an fsspec filesystem (two ranged reads), checked for shape."""
    name = posixpath.basename(path)
    try:
        size = int(fs.size(path))
        (n,) = struct.unpack("<Q", fs.cat_file(path, start=0, end=8))
        if n > min(size - 8, 100 * 1024 * 1024):
            raise ValueError(f"header length {n} does not fit the file")
        header = json.loads(fs.cat_file(path, start=8, end=8 + n))
        header.pop("__metadata__", None)
        for meta in header.values():
            begin, end = meta["data_offsets"]
            if not 0 <= begin <= end <= size - 8 - n:
                raise ValueError("a tensor lies outside the file")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ShardError(f"{name}: {exc}") from exc
    return header, 8 + n


class MergedSafetensors(io.RawIOBase):
    """The shards listed by an index file, as one safetensors file (see the module doc).

    ``fs``: an fsspec filesystem holding the index and shards (``phaseboard ingest s3://...``);
    default the local disk.
    """

    def __init__(self, index_path: str | Path, fs: Any = None) -> None:
        super().__init__()
        self._fs = fs
        index_name = posixpath.basename(str(index_path))
        try:
            text = Path(index_path).read_text() if fs is None else fs.cat_file(str(index_path))
            weight_map: dict[str, str] = json.loads(text)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShardError(f"{index_name}: not a safetensors index ({exc})") from exc
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        pieces: list[tuple[Any, int, int]] = []  # (shard path, start, length)
        offset = 0
        found: set[str] = set()
        for shard in sorted(set(weight_map.values())):
            if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
                raise ShardError(f"{index_name}: shard {shard!r} is missing")
            path: Any
            if fs is None:
                path = Path(index_path).parent / shard
                if not path.is_file():
                    raise ShardError(f"{index_name}: shard {shard!r} is missing")
                entries, base = _shard_header(path)
            else:
                path = posixpath.join(posixpath.dirname(str(index_path)), shard)
                if not fs.isfile(path):
                    raise ShardError(f"{index_name}: shard {shard!r} is missing")
                entries, base = _remote_shard_header(fs, path)
            for name, meta in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                begin, end = meta["data_offsets"]
                header[name] = {**meta, "data_offsets": [offset, offset + end - begin]}
                pieces.append((path, base + begin, end - begin))
                offset += end - begin
                found.add(name)
        missing = sorted(set(weight_map) - found)
        if missing:
            raise ShardError(f"{index_name}: tensors not in their shards: {missing[:5]}")
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._head = struct.pack("<Q", len(raw)) + raw
        self._pieces = pieces
        self._starts = []  # where each piece starts in the merged file
        pos = len(self._head)
        for _, _, length in pieces:
            self._starts.append(pos)
            pos += length
        self.size = pos
        self._pos = 0
        self._open: tuple[Any, Any] | None = None
        self.name = "model.safetensors"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _shard(self, path: Any) -> Any:
        if self._open is None or self._open[0] != path:
            if self._open is not None:
                self._open[1].close()
            opened = open(path, "rb") if self._fs is None else self._fs.open(path, "rb")  # noqa: SIM115 - kept open across reads
            self._open = (path, opened)
        return self._open[1]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        out = bytearray()
        while n > 0 and self._pos < self.size:
            if self._pos < len(self._head):
                chunk = self._head[self._pos : self._pos + n]
            else:
                i = _piece_at(self._starts, self._pos)
                path, start, length = self._pieces[i]
                within = self._pos - self._starts[i]
                fh = self._shard(path)
                fh.seek(start + within)
                chunk = fh.read(min(n, length - within))
                if not chunk:
                    name = posixpath.basename(str(path))
                    raise ShardError(f"{name} is shorter than its header says")
            out += chunk
            self._pos += len(chunk)
            n -= len(chunk)
        return bytes(out)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
        super().close()


def _piece_at(starts: list[int], pos: int) -> int:
    import bisect

    return bisect.bisect_right(starts, pos) - 1
