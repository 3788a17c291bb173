"""Loading a file: safetensors, or torch's weights-only unpickler under budgets.

Before torch unpickles anything, the pickle's opcodes are read under a budget
(``pickle_scan``): size, opcode count against the file's size, estimated memory, calls that
would allocate from a count, tensors claiming more elements than their storage. A zip's
directory is bounded in entries and its members in inflated size; a safetensors header in
bytes and tensor count, before the real parser sees it.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import struct
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointTooComplex, CorruptCheckpoint, UnsafeCheckpoint
from .formats import LoadLimits
from .pickle_scan import PickleBudget, scan_pickle, scan_pickles

# --- loading ------------------------------------------------------------------------------


def _load_safetensors(path: str | Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CorruptCheckpoint(f"corrupt safetensors file: {exc}") from exc


def _check_header_size(path: str | Path, limits: LoadLimits) -> None:
    """Refuse a safetensors header over ``max_header_bytes`` or with more entries than
    ``max_tensors`` before any JSON parser sees it: every entry is an object, so the count
    of ``{`` bytes bounds the entries from above."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptCheckpoint("corrupt safetensors file: shorter than its header length")
        (n,) = struct.unpack("<Q", head)
        if n > limits.max_header_bytes:
            raise CheckpointTooComplex(
                f"refused: the safetensors header is {n} bytes, more than the limit of "
                f"{limits.max_header_bytes}"
            )
        entries = fh.read(n).count(b"{") - 1
    if entries > limits.max_tensors:
        raise CheckpointTooComplex(
            f"refused: the safetensors header holds up to {entries} tensors, more than the "
            f"limit of {limits.max_tensors}"
        )


def _check_safetensors_header(
    path: str | Path, limits: LoadLimits | None = None
) -> dict[str, tuple[int, ...]]:
    """Parse the header with the real loader (its rules: types, offsets with no gap or
    overlap, no trailing bytes, JSON depth) once its size and entry count are within
    ``limits``; returns ``{name: shape}``. Reads no data."""
    from safetensors import SafetensorError, safe_open

    _check_header_size(path, limits or LoadLimits())

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "not fully covered" in first or "invalid offset" in first:
            first = _coverage_problem(Path(path)) or f"{first} (a gap or an overlap)"
        raise CorruptCheckpoint(f"corrupt safetensors file: {first[:300]}") from exc


def _coverage_problem(path: Path) -> str | None:
    """Say whether data is cut off or left over; only called once the real parser accepted
    the header's JSON (so parsing it here is safe)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        ends = [
            int(m["data_offsets"][1])
            for k, m in header.items()
            if k != "__metadata__" and isinstance(m, dict)
        ]
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return None
    end = 8 + n + max(ends, default=0)
    if end > size:
        return f"truncated safetensors file: tensors end at byte {end} but the file has {size}"
    if end < size:
        return f"{size - end} trailing bytes after the last tensor"
    return None  # a gap or an overlap: the loader's own message names the tensor


@cache
def _allowed_globals() -> list[Any]:
    """Harmless globals real training checkpoints carry, for torch's ``weights_only`` loader:
    numpy arrays, dtypes and scalars (RNG states, metrics), ``argparse.Namespace`` (Lightning
    hparams), containers. Anything else is still refused by torch itself. Calls that could
    allocate from a count (``list(huge)``, ``ndarray(shape)``) are refused by
    ``pickle_scan`` before torch runs; ``range`` is not allowed at all."""
    import argparse
    import collections

    import numpy.dtypes

    multiarray = np._core.multiarray  # numpy >= 2 ("numpy.core" in files written by numpy 1)
    allowed: list[Any] = [
        argparse.Namespace,
        collections.OrderedDict,
        collections.defaultdict,
        collections.deque,
        torch.Size,
        np.ndarray,
        np.dtype,
        list,
        dict,
        set,
        frozenset,
        tuple,
        slice,
        complex,
    ]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((multiarray._reconstruct, f"{mod}._reconstruct"))
        allowed.append((multiarray.scalar, f"{mod}.scalar"))
    allowed += [
        cls
        for name in dir(numpy.dtypes)
        if isinstance(cls := getattr(numpy.dtypes, name), type) and issubclass(cls, np.dtype)
    ]
    return allowed


_ZIP_SLACK = 64  # entries besides one per tensor: data.pkl, version, byteorder, ...


def _zip_entries(path: str | Path) -> int | None:
    """The entry count the archive's end-of-directory record declares (zip64 too), read
    before ``zipfile`` builds an object per entry; None if no record is found."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - 65_557))
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    entries = struct.unpack("<H", tail[at + 10 : at + 12])[0]
    loc = tail.rfind(b"PK\x06\x07", 0, at)
    if entries == 0xFFFF and loc >= 0 and loc + 20 <= len(tail):
        (eocd64,) = struct.unpack("<Q", tail[loc + 8 : loc + 16])
        with open(path, "rb") as fh:
            fh.seek(eocd64)
            record = fh.read(56)
        if record[:4] == b"PK\x06\x06" and len(record) == 56:
            entries = struct.unpack("<Q", record[32:40])[0]
    return entries


def _check_zip_members(path: str | Path, limits: LoadLimits) -> list[str]:
    """Refuse an archive with more entries than tensors allowed, or whose compressed members
    would inflate past the limit, from the sizes its directory declares, before any member
    is read (a zip bomb costs nothing). Returns the names of its pickles."""
    entries = _zip_entries(path)
    if entries is not None and entries > limits.max_tensors + _ZIP_SLACK:
        raise CheckpointTooComplex(
            f"refused: the archive has {entries} entries, more than the limit of "
            f"{limits.max_tensors} tensors"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"corrupt torch checkpoint: {exc}") from exc
    if len(infos) > limits.max_tensors + _ZIP_SLACK:
        raise CheckpointTooComplex(
            f"refused: the archive has {len(infos)} entries, more than the limit of "
            f"{limits.max_tensors} tensors"
        )
    inflated = 0
    pickles = []
    for zi in infos:
        if zi.filename.endswith(".pkl"):
            pickles.append(zi.filename)
            if zi.file_size > limits.max_pickle_bytes:
                raise CheckpointTooComplex(  # unpickling is the costly part, stored or not
                    f"refused: the archive's pickle {zi.filename!r} would inflate to more "
                    f"than {limits.max_pickle_bytes} bytes ({zi.file_size})",
                    inflated=0,
                )
        if zi.compress_type == zipfile.ZIP_STORED:
            if zi.file_size != zi.compress_size:
                raise CorruptCheckpoint(f"corrupt torch checkpoint: member {zi.filename!r}")
            continue
        inflated += zi.file_size
        if inflated > limits.max_inflated_bytes:
            raise CheckpointTooComplex(
                f"refused: compressed archive members would inflate to more than "
                f"{limits.max_inflated_bytes} bytes ({zi.filename!r} alone: {zi.file_size})",
                inflated=0,
            )
    return pickles


def _scan_torch_file(path: str | Path, limits: LoadLimits, pickles: list[str] | None) -> None:
    """Read the file's pickle(s) under a ``PickleBudget`` before torch unpickles them."""
    budget = PickleBudget(limits.max_pickle_memory, os.path.getsize(path))
    if pickles is None:  # legacy format: five pickles, then the storages' bytes
        with open(path, "rb") as fh:
            head = fh.read(limits.max_pickle_bytes + 1)
        if head[:2] == b"PK":
            raise CorruptCheckpoint(
                "corrupt torch checkpoint: a zip archive without its directory (cut off?)"
            )
        try:
            scan_pickles(head, budget, 5)
        except CorruptCheckpoint as exc:
            if len(head) > limits.max_pickle_bytes and "ends" in str(exc):
                raise CheckpointTooComplex(
                    f"refused: the pickle is larger than {limits.max_pickle_bytes} bytes"
                ) from None
            raise
        return
    with zipfile.ZipFile(path) as zf:
        for name in pickles:  # sizes checked by _check_zip_members
            scan_pickle(zf.read(name), budget)


def _torch_load(path: str | Path, limits: LoadLimits | None = None) -> Any:
    """``torch.load(weights_only=True)`` with the harmless globals allowed; mmap for zip
    files so big files stay on disk."""
    limits = limits or LoadLimits()
    is_zip = zipfile.is_zipfile(path)
    try:
        pickles = _check_zip_members(path, limits) if is_zip else None
        _scan_torch_file(path, limits, pickles)
    except UnsafeCheckpoint as exc:  # name an import torch would refuse, if there is one
        names = _unsafe_globals(path, is_zip)
        if names:
            raise UnsafeCheckpoint(_named_refusal(names)) from exc
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        if isinstance(exc, CheckpointTooComplex | CorruptCheckpoint):
            raise
        raise CorruptCheckpoint(f"corrupt torch checkpoint: {exc}") from exc
    # torch.load picks its safetensors loader by file name; we decided the format by content,
    # so such names get a file object (no mmap) instead.
    by_name = str(path).lower().endswith(".safetensors")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            if by_name:
                with open(path, "rb") as fh:
                    return torch.load(fh, map_location="cpu", weights_only=True)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(_refusal_message(path, str(exc), is_zip)) from exc
    except RecursionError as exc:
        raise CheckpointTooComplex("refused: the pickle nests objects too deeply") from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpoint(f"corrupt torch checkpoint: {first}") from exc
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds on garbage
        raise CorruptCheckpoint(f"corrupt torch checkpoint: {type(exc).__name__}: {exc}") from exc


_GLOBAL_IN_MSG = re.compile(r"GLOBAL ([\w.]+)")
_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins", "numpy", "__builtin__")


def _unsafe_globals(path: str | Path, is_zip: bool) -> list[str]:
    """What the pickle would import that torch's allow-list lacks, found without running it
    (torch's own ``get_unsafe_globals_in_checkpoint`` for zip files, an opcode scan for
    legacy ones); best effort, empty when it cannot tell."""
    try:
        if is_zip:  # member sizes were checked before
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        return [g for g in _pickle_globals(path) if not g.startswith(_SAFE_MODULES)]
    except Exception:  # noqa: BLE001 - best effort, the refusal stands either way
        return []


def _named_refusal(names: list[str]) -> str:
    what = ", ".join(f"'{n}'" for n in dict.fromkeys(names))
    return (
        f"refused: the file is a pickle that would import/execute {what} when loaded; "
        "only tensors (and plain training-state values) are accepted"
    )


def _refusal_message(path: str | Path, torch_message: str, is_zip: bool) -> str:
    """Name what the pickle would have imported (see ``_unsafe_globals``)."""
    names = _unsafe_globals(path, is_zip)
    m = _GLOBAL_IN_MSG.search(torch_message)
    if not names and m:
        names.append(m.group(1))
    if names:
        return _named_refusal(names)
    return (
        "refused: the file is a pickle that torch.load(weights_only=True) cannot load safely "
        "(it needs objects other than tensors); save a plain state_dict or use safetensors"
    )


def _pickle_globals(path: str | Path) -> list[str]:
    """Globals a legacy (non-zip) pickle references (``module.name``), by opcode scan."""
    with open(path, "rb") as fh:
        data = fh.read(64 * 1024 * 1024)
    found, strings = [], []
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return found
