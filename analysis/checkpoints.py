"""Safe checkpoint loading and checks; a library, usable from a notebook.

Only two loaders ever touch uploaded bytes: ``safetensors`` (cannot execute code) and
``torch.load(weights_only=True)`` (a restricted unpickler that refuses arbitrary globals).
Plain unpickling is never used. The format is detected from the content, not the file name.

``scan_checkpoint_file`` validates a file and counts tensors / non-finite values without
loading it into memory: safetensors data is streamed in chunks from disk, torch files are
memory-mapped.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CorruptCheckpoint",
    "NotAStateDict",
    "UnsafeCheckpoint",
    "detect_format",
    "inspect_state_dict",
    "load_state_dict_file",
    "save_safetensors_bytes",
    "scan_checkpoint_file",
]

Format = Literal["safetensors", "torch"]

# Keys under which training scripts commonly nest the model's state_dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "params", "weights")
_SCAN_CHUNK = 4 * 1024 * 1024  # bytes of tensor data looked at per step (memory stays flat)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the problem."""


class UnsafeCheckpoint(CheckpointError):
    """A pickle that would import or run code when loaded; it was refused, nothing ran."""


class CorruptCheckpoint(CheckpointError):
    """Truncated, garbled, or not a checkpoint format at all."""


class NotAStateDict(CheckpointError):
    """A valid file whose content is not a (nested) dict of tensors."""


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


# --- loading ------------------------------------------------------------------------------


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a checkpoint file into a flat ``{name: tensor}`` dict (CPU), safely.

    Accepts safetensors and ``torch.save`` files; unwraps ``{"state_dict": ...}``-style
    wrappers and flattens nested dicts with dots. Raises a ``CheckpointError`` subclass.
    """
    fmt = detect_format(path)
    if fmt == "safetensors":
        return _load_safetensors(path)
    return state_dict_from_object(_torch_load(path))


def _load_safetensors(path: str | Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CorruptCheckpoint(f"corrupt safetensors file: {exc}") from exc


def _torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``; mmap for zip files so big files stay on disk."""
    is_zip = zipfile.is_zipfile(path)
    # torch.load picks its safetensors loader by file name; we decided the format by content,
    # so such names get a file object (no mmap) instead.
    by_name = str(path).lower().endswith(".safetensors")
    try:
        if by_name:
            with open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(_refusal_message(path, str(exc))) from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpoint(f"corrupt torch checkpoint: {first}") from exc
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds on garbage
        raise CorruptCheckpoint(f"corrupt torch checkpoint: {type(exc).__name__}: {exc}") from exc


_GLOBAL_IN_MSG = re.compile(r"GLOBAL ([\w.]+)")
_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins", "numpy", "__builtin__")


def _refusal_message(path: str | Path, torch_message: str) -> str:
    """Name what the pickle would have imported; found by parsing opcodes, never running."""
    names = [g for g in _pickle_globals(path) if not g.startswith(_SAFE_MODULES)]
    m = _GLOBAL_IN_MSG.search(torch_message)
    if not names and m:
        names.append(m.group(1))
    if names:
        what = ", ".join(f"'{n}'" for n in dict.fromkeys(names))
        return (
            f"refused: the file is a pickle that would import/execute {what} when loaded; "
            "only tensors are accepted (save with safetensors or a plain state_dict)"
        )
    return (
        "refused: the file is a pickle that torch.load(weights_only=True) cannot load safely "
        "(it needs objects other than tensors); save a plain state_dict or use safetensors"
    )


def _pickle_globals(path: str | Path) -> list[str]:
    """Globals a pickle references (``module.name``), by static opcode scan."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(pkl) if pkl else b""
        else:
            data = Path(path).read_bytes()[: 64 * 1024 * 1024]
        found, strings = [], []
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:  # noqa: BLE001 - best effort, the refusal stands either way
        return []


def state_dict_from_object(obj: Any) -> dict[str, Tensor]:
    """Unwrap common wrappers and flatten nested dicts into ``{dotted.name: tensor}``."""
    if isinstance(obj, Tensor):
        raise NotAStateDict("the file holds a single tensor, not a state_dict (name -> tensor)")
    if not isinstance(obj, Mapping):
        raise NotAStateDict(
            f"the file holds a {type(obj).__name__}, not a state_dict (a dict of tensors)"
        )
    if len(obj) == 1 and next(iter(obj)) in WRAPPER_KEYS:
        obj = next(iter(obj.values()))
        if not isinstance(obj, Mapping):
            raise NotAStateDict("not a state_dict: the wrapped value is not a dict of tensors")
    out: dict[str, Tensor] = {}
    bad: list[str] = []
    _flatten(obj, "", out, bad)
    if bad:  # a training checkpoint ({"model": ..., "optimizer": ..., "step": ...})?
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                inner_out: dict[str, Tensor] = {}
                inner_bad: list[str] = []
                _flatten(inner, "", inner_out, inner_bad)
                if not inner_bad and inner_out:
                    return inner_out
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise NotAStateDict(f"not a state_dict: entries that are not tensors: {shown}")
    if not out:
        raise NotAStateDict("not a state_dict: the file holds no tensors")
    return out


def _flatten(obj: Mapping, prefix: str, out: dict[str, Tensor], bad: list[str]) -> None:
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, Tensor):
            out[name] = v
        elif isinstance(v, Mapping):
            _flatten(v, name + ".", out, bad)
        else:
            bad.append(f"{name!r} ({type(v).__name__})")


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


def scan_checkpoint_file(path: str | Path) -> CheckpointInfo:
    """Validate a checkpoint file and inspect it, without holding it in memory."""
    fmt = detect_format(path)
    if fmt == "safetensors":
        info = _scan_safetensors(Path(path))
    else:
        info = inspect_state_dict(state_dict_from_object(_torch_load(path)))
    return CheckpointInfo(info.n_tensors, info.n_params, info.non_finite, fmt)


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


# --- writing ------------------------------------------------------------------------------


def save_safetensors_bytes(state_dict: Mapping[str, Tensor]) -> bytes:
    """Serialise a state_dict to safetensors bytes (tensors copied to contiguous CPU)."""
    from safetensors.torch import save

    flat = state_dict_from_object(dict(state_dict))
    return save({k: v.detach().cpu().contiguous().clone() for k, v in flat.items()})
