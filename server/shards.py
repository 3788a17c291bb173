"""Sharded safetensors checkpoints (``model.safetensors.index.json``) read as one file.

``MergedSafetensors`` is a read-only, seekable file object whose bytes are a single
safetensors file holding every tensor of the shards: a new header, then each tensor's bytes
copied from its shard on demand, shard by shard, in file order. Nothing is merged on disk and
memory stays at one read buffer, so ``phaseboard ingest`` streams it like any file.
"""

from __future__ import annotations

import io
import json
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


class MergedSafetensors(io.RawIOBase):
    """The shards listed by an index file, as one safetensors file (see the module doc)."""

    def __init__(self, index_path: str | Path) -> None:
        super().__init__()
        index_path = Path(index_path)
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShardError(f"{index_path.name}: not a safetensors index ({exc})") from exc
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        pieces: list[tuple[Path, int, int]] = []  # (shard, start, length)
        offset = 0
        found: set[str] = set()
        for shard in sorted(set(weight_map.values())):
            path = index_path.parent / shard
            if path.parent != index_path.parent or not path.is_file():
                raise ShardError(f"{index_path.name}: shard {shard!r} is missing")
            entries, base = _shard_header(path)
            for name, meta in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                begin, end = meta["data_offsets"]
                header[name] = {**meta, "data_offsets": [offset, offset + end - begin]}
                pieces.append((path, base + begin, end - begin))
                offset += end - begin
                found.add(name)
        missing = sorted(set(weight_map) - found)
        if missing:
            raise ShardError(f"{index_path.name}: tensors not in their shards: {missing[:5]}")
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
        self._open: tuple[Path, Any] | None = None
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

    def _shard(self, path: Path) -> Any:
        if self._open is None or self._open[0] != path:
            if self._open is not None:
                self._open[1].close()
            self._open = (path, open(path, "rb"))  # noqa: SIM115 - kept open across reads
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
                    raise ShardError(f"{path.name} is shorter than its header says")
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
