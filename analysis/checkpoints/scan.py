"""Counting tensors and non-finite values, streaming from disk."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CorruptCheckpoint, NotAStateDict
from .formats import _SCAN_CHUNK, CheckpointInfo

# --- checks -------------------------------------------------------------------------------


def inspect_state_dict(state_dict: Mapping[str, Tensor]) -> CheckpointInfo:
    """Count tensors and parameters; name every floating tensor with NaN or inf values."""
    n_params, non_finite = 0, []
    for name, t in state_dict.items():
        n_params += t.numel()
        if (t.is_floating_point() or t.is_complex()) and not _all_finite(t):
            non_finite.append(name)
    return CheckpointInfo(len(state_dict), n_params, non_finite)


def _all_finite(t: Tensor) -> bool:
    flat = t.detach().reshape(-1)
    step = max(1, _SCAN_CHUNK // max(1, t.element_size()))
    return all(bool(torch.isfinite(flat[i : i + step]).all()) for i in range(0, len(flat), step))


# Exponent-bit masks: a float is NaN/inf iff all its exponent bits are set.
_ST_FLOATS: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<u8"), 0x7FF0000000000000),
    "F32": (np.dtype("<u4"), 0x7F800000),
    "F16": (np.dtype("<u2"), 0x7C00),
    "BF16": (np.dtype("<u2"), 0x7F80),
}
_ST_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
}  # fmt: skip


def _scan_safetensors(path: Path) -> CheckpointInfo:
    """Check the header against the file and stream the data looking for NaN/inf."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptCheckpoint(f"corrupt safetensors header: {exc}") from exc
        if not isinstance(header, dict):
            raise CorruptCheckpoint("corrupt safetensors header: not a JSON object")
        header.pop("__metadata__", None)
        base, data_len = 8 + n, size - 8 - n
        spans, n_params, non_finite = [], 0, []
        for name, meta in header.items():
            try:
                dtype, shape, (begin, end) = meta["dtype"], meta["shape"], meta["data_offsets"]
                numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptCheckpoint(f"corrupt safetensors header entry {name!r}") from exc
            if dtype not in _ST_SIZES:
                raise CorruptCheckpoint(f"tensor {name!r} has unknown dtype {dtype!r}")
            if end - begin != numel * _ST_SIZES[dtype] or begin < 0 or end < begin:
                raise CorruptCheckpoint(f"tensor {name!r}: offsets do not match its shape")
            if end > data_len:
                raise CorruptCheckpoint(
                    f"truncated safetensors file: tensor {name!r} ends at byte {base + end} "
                    f"but the file has {size} bytes"
                )
            spans.append((begin, end))
            n_params += numel
            if dtype in _ST_FLOATS and not _finite_on_disk(fh, base + begin, end - begin, dtype):
                non_finite.append(name)
        spans.sort()
        for (_, e1), (b2, _) in zip(spans, spans[1:], strict=False):
            if b2 < e1:
                raise CorruptCheckpoint("corrupt safetensors file: tensors overlap")
        if not header:
            raise NotAStateDict("not a state_dict: the safetensors file holds no tensors")
    return CheckpointInfo(len(header), n_params, non_finite)


def _finite_on_disk(fh: Any, offset: int, length: int, dtype: str) -> bool:
    np_dtype, mask = _ST_FLOATS[dtype]
    chunk = _SCAN_CHUNK - _SCAN_CHUNK % np_dtype.itemsize
    fh.seek(offset)
    remaining = length
    mask_v = np_dtype.type(mask)
    while remaining > 0:
        buf = fh.read(min(chunk, remaining))
        if not buf:
            raise CorruptCheckpoint("truncated safetensors file")
        remaining -= len(buf)
        bits = np.frombuffer(buf, dtype=np_dtype)
        if np.any((bits & mask_v) == mask_v):
            return False
    return True
