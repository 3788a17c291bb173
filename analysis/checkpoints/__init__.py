"""Safe checkpoint loading and checks; a library, usable from a notebook.

Only two loaders ever touch uploaded bytes: ``safetensors`` (cannot execute code) and
``torch.load(weights_only=True)`` (a restricted unpickler that refuses arbitrary globals).
Plain unpickling is never used. The format is detected from the content, not the file name.

``scan_checkpoint_file`` validates a file and counts tensors / non-finite values without
loading it into memory: safetensors data is streamed in chunks from disk, torch files are
memory-mapped. ``prepare_checkpoint`` is the one upload path: it also finds the weights in a
training checkpoint (``state_dict``, ``model``, ``ema``, ...), works out the wrapper prefix to
strip (``module.``, ``_orig_mod.``, Lightning's ``model.``) as a ``KeyMapping``, and checks
names and shapes against the model a task expects.

Every inspection is bounded (``LoadLimits``): archive members are size-checked before they
are inflated, a pickle's opcodes are read under a budget before torch unpickles it
(``pickle_scan``: no call allocating from a count, no tensor claiming more than its storage),
safetensors headers are bounded in bytes and entries and go through the real (Rust) parser
first, loaded tensors must be dense CPU data no larger than the file (``tensors``), and
walking the unpickled object visits each container once, up to a count, a depth and a time.

The package by role: ``formats`` (detection, limits), ``errors``, ``mapping`` (names; imports
no torch, so the API can read a mapping without it), ``pickle_scan``, ``loading``,
``tensors`` (what a loaded tensor may be), ``weights`` (finding and checking them), ``scan``
and ``writing``. Names are imported lazily from here.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    CheckpointError,
    CheckpointTooComplex,
    CorruptCheckpoint,
    ModelMismatch,
    NotAStateDict,
    UnsafeCheckpoint,
    UnsupportedTensor,
)
from .mapping import (
    EMA_KEYS,
    WRAPPER_KEYS,
    WRAPPER_PREFIXES,
    KeyMapping,
    apply_key_mapping,
    resolve_prefix,
)

_LAZY = {
    "CheckpointInfo": "formats",
    "ExpectedShapes": "weights",
    "Format": "formats",
    "LoadLimits": "formats",
    "PreparedCheckpoint": "weights",
    "check_shapes": "weights",
    "check_tensors": "tensors",
    "detect_format": "formats",
    "extract_weights": "weights",
    "inspect_state_dict": "scan",
    "load_state_dict_file": "weights",
    "prepare_checkpoint": "weights",
    "save_safetensors_bytes": "writing",
    "scan_checkpoint_file": "weights",
    "state_dict_from_object": "weights",
    "write_safetensors": "writing",
}

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointTooComplex",
    "CorruptCheckpoint",
    "EMA_KEYS",
    "ExpectedShapes",
    "Format",
    "KeyMapping",
    "LoadLimits",
    "ModelMismatch",
    "NotAStateDict",
    "PreparedCheckpoint",
    "UnsafeCheckpoint",
    "UnsupportedTensor",
    "WRAPPER_KEYS",
    "WRAPPER_PREFIXES",
    "apply_key_mapping",
    "check_shapes",
    "check_tensors",
    "detect_format",
    "extract_weights",
    "inspect_state_dict",
    "load_state_dict_file",
    "prepare_checkpoint",
    "resolve_prefix",
    "save_safetensors_bytes",
    "scan_checkpoint_file",
    "state_dict_from_object",
    "write_safetensors",
]


def __getattr__(name: str) -> Any:
    """Load torch-dependent parts on first use (``mapping`` and ``errors`` need no torch)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
