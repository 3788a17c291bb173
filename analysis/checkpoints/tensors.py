"""Which loaded tensors Phaseboard keeps: dense, on the CPU, a stored dtype, and no larger
than the bytes that hold them.

``check_tensors`` runs on tensor metadata only (shape, strides, storage size), before any
element is read: a tensor whose shape claims more elements than its storage holds (an
expanded or overlapping view) would otherwise grow from a few bytes on disk to gigabytes
when it is scanned or written out contiguously.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .errors import CheckpointTooComplex, UnsupportedTensor
from .formats import LoadLimits

__all__ = ["ST_NAMES", "check_tensors", "tensor_problem"]

ST_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}  # fmt: skip
"""The dtypes a checkpoint may hold: those safetensors stores (the format we keep)."""

TIE_RATIO = 4
"""Tensors may reference the same bytes (tied weights): their total size may be this many
times the file's, plus ``TIE_SLACK`` bytes, and no more."""
TIE_SLACK = 1024 * 1024


def tensor_problem(t: Tensor) -> str | None:
    """Why ``t`` is not a tensor we load, in words, or None. Reads no elements."""
    if t.is_nested:
        return "a nested tensor"
    if t.layout != torch.strided:
        return f"a {str(t.layout).removeprefix('torch.').removesuffix('_coo')} tensor"
    if t.is_quantized:
        return "a quantized tensor"
    if t.is_meta or t.device.type == "meta":
        return "a meta-device tensor (it has no data)"
    if t.device.type != "cpu":
        return f"a tensor on device {t.device}"
    if t.dtype not in ST_NAMES:
        return f"of dtype {str(t.dtype).removeprefix('torch.')}, which safetensors cannot store"
    return None


def _needed_elements(t: Tensor) -> int:
    """Elements of the storage the view reaches (offset + extent), 0 for an empty tensor."""
    if t.numel() == 0:
        return 0
    extent = 1 + sum((d - 1) * s for d, s in zip(t.shape, t.stride(), strict=True))
    return t.storage_offset() + max(extent, t.numel())


def check_tensors(
    tensors: Mapping[str, Tensor], file_bytes: int, limits: LoadLimits | None = None
) -> None:
    """Refuse (``UnsupportedTensor`` / ``CheckpointTooComplex``) a set of loaded tensors that
    is not dense CPU data of a stored dtype, or that is larger than the file holding it:
    more tensors than ``limits.max_tensors``, a view needing more elements than its storage
    has (expanded, stride-0 or overlapping strides), storages adding up to more bytes than
    the file, or (tied) tensors adding up to more than ``TIE_RATIO`` times the file."""
    limits = limits or LoadLimits()
    if len(tensors) > limits.max_tensors:
        raise CheckpointTooComplex(
            f"refused: the file holds {len(tensors)} tensors, more than the limit of "
            f"{limits.max_tensors}"
        )
    storages: dict[int, int] = {}
    total = 0
    for name, t in tensors.items():
        problem = tensor_problem(t)
        if problem is not None:
            raise UnsupportedTensor(
                f"tensor {name[:200]!r} is {problem}; only dense CPU tensors of the dtypes "
                "safetensors stores are accepted (save tensor.to_dense().cpu())"
            )
        size = t.element_size()
        stored = t.untyped_storage().nbytes()
        if any(s == 0 and d > 1 for d, s in zip(t.shape, t.stride(), strict=True)):
            raise UnsupportedTensor(
                f"tensor {name[:200]!r} of shape {list(t.shape)} is an expanded view "
                f"(a stride of 0): it claims {t.numel()} elements but stores "
                f"{stored // max(size, 1)}; save tensor.contiguous() instead"
            )
        if max(t.numel(), _needed_elements(t)) * size > stored:
            raise UnsupportedTensor(
                f"tensor {name[:200]!r} of shape {list(t.shape)} (strides {list(t.stride())}) "
                f"needs {max(t.numel(), _needed_elements(t))} elements but its storage holds "
                f"{stored // max(size, 1)} (overlapping strides); save tensor.contiguous()"
            )
        storages[t.untyped_storage().data_ptr()] = stored
        total += t.numel() * size
    held = sum(storages.values())
    if held > file_bytes + TIE_SLACK:
        raise CheckpointTooComplex(
            f"refused: the tensors' storages hold {held} bytes; the file has {file_bytes}"
        )
    if total > TIE_RATIO * file_bytes + TIE_SLACK:
        raise CheckpointTooComplex(
            f"refused: the tensors add up to {total} bytes, more than {TIE_RATIO} times the "
            f"file's {file_bytes} (views of the same data repeated)"
        )
