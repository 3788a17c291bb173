"""Writing state_dicts as safetensors."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .errors import NotAStateDict
from .tensors import ST_NAMES as _ST_NAMES
from .weights import state_dict_from_object

# --- writing ------------------------------------------------------------------------------


def save_safetensors_bytes(state_dict: Mapping[str, Tensor]) -> bytes:
    """Serialise a state_dict to safetensors bytes (tensors copied to contiguous CPU)."""
    from safetensors.torch import save

    flat = state_dict_from_object(dict(state_dict))
    return save({k: v.detach().cpu().contiguous().clone() for k, v in flat.items()})


def write_safetensors(state_dict: Mapping[str, Tensor], fh: Any) -> int:
    """Write ``state_dict`` as safetensors to an open binary file, one tensor at a time.

    ``safetensors.torch.save_file`` holds every tensor's bytes at once; this writes the
    header, then each tensor in turn (tied tensors are written twice), so memory stays at one
    tensor. Returns the number of bytes written.
    """
    header: dict[str, Any] = {}
    offset = 0
    for name, t in state_dict.items():
        if t.dtype not in _ST_NAMES:
            raise NotAStateDict(f"tensor {name!r} has dtype {t.dtype}, which safetensors lacks")
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _ST_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    fh.write(struct.pack("<Q", len(raw)))
    fh.write(raw)
    for t in state_dict.values():
        flat = t.detach().cpu().contiguous().reshape(-1)
        if flat.numel():
            fh.write(flat.view(torch.uint8).numpy().data)
    return 8 + len(raw) + offset
