"""Checkpoint formats, detected from content; the bounds on inspecting one file."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import CorruptCheckpoint

Format = Literal["safetensors", "torch"]

_SCAN_CHUNK = 4 * 1024 * 1024  # bytes of tensor data looked at per step (memory stays flat)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class LoadLimits:
    """Bounds on the work of inspecting one file; past any of them it is refused."""

    max_objects: int = 1_000_000  # dict entries / containers looked at, in all
    max_depth: int = 64  # nesting of dicts inside the unpickled object
    # decompressed size of compressed zip members in all
    max_inflated_bytes: int = 256 * 1024 * 1024
    max_seconds: float = 30.0  # wall time of the walk over the unpickled object
    max_tensors: int = 100_000  # tensors in one file (safetensors header entries included)
    max_pickle_bytes: int = 64 * 1024 * 1024  # the pickle itself (torch keeps data apart)
    # estimated memory of the objects unpickling builds (``pickle_scan``), before it runs
    max_pickle_memory: int = 128 * 1024 * 1024
    max_header_bytes: int = 16 * 1024 * 1024  # a safetensors file's JSON header


@dataclass(frozen=True)
class CheckpointInfo:
    n_tensors: int
    n_params: int
    non_finite: list[str] = field(default_factory=list)  # tensor names holding NaN/inf
    format: Format | None = None


# --- format detection ---------------------------------------------------------------------


def detect_format(path: str | Path) -> Format:
    """``safetensors`` (u64 header length + JSON) or ``torch`` (zip or legacy pickle)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
        size = fh.seek(0, 2)
    if len(head) == 0:
        raise CorruptCheckpoint("the file is empty")
    if len(head) == 9 and head[8:9] == b"{":  # before the pickle test: u64 may start 0x80
        (n,) = struct.unpack("<Q", head[:8])
        if n > _MAX_HEADER or 8 + n > size:
            raise CorruptCheckpoint(
                f"safetensors header claims {n} bytes but the file has {size} (truncated?)"
            )
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    raise CorruptCheckpoint(
        "not a checkpoint: expected a safetensors file or a torch.save file (zip or pickle)"
    )
