"""Token data for the generic language-model tasks: safe loading, checks, windows.

A token file holds one integer tensor: a 1-D stream of token ids or (N, T) sequences.
Accepted formats, detected from the content (never the file name), all loaded without
executing code: ``.npy`` (``numpy.load(allow_pickle=False)``), safetensors (one tensor,
or one named ``input_ids`` / ``tokens``) and weights-only ``torch.save`` files (a tensor,
or a dict holding one as above). Every check a checkpoint gets applies here too
(``analysis.checkpoints``: archive inflation and entry counts, the pickle budget, header
bounds, tensors no larger than the file, dense CPU tensors only), under ``limits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checkpoints.errors import CheckpointError
from .checkpoints.formats import LoadLimits

__all__ = [
    "TokenDataError",
    "TokenInfo",
    "load_token_file",
    "scan_token_file",
    "token_windows",
]

_NPY_MAGIC = b"\x93NUMPY"
_PREFERRED_KEYS = ("input_ids", "tokens", "token_ids", "ids")


class TokenDataError(ValueError):
    """A file or tensor that is not usable token data; the message says why."""


@dataclass(frozen=True)
class TokenInfo:
    """What an upload holds: shape, dtype, token count and the largest id (for vocab checks)."""

    shape: tuple[int, ...]
    dtype: str
    n_tokens: int
    max_token: int
    format: str  # npy | safetensors | torch


def _pick(tensors: dict[str, Tensor], where: str) -> Tensor:
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    for key in _PREFERRED_KEYS:
        if key in tensors:
            return tensors[key]
    raise TokenDataError(
        f"{where} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}); "
        f"expected one, or one named {' / '.join(_PREFERRED_KEYS)}"
    )


def _detect(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if not head:
        raise TokenDataError("the file is empty")
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    raise TokenDataError(
        "not token data: expected a .npy, safetensors or torch.save file holding an integer tensor"
    )


def _load_any(path: Path, limits: LoadLimits | None = None) -> tuple[Tensor | np.ndarray, str]:
    try:
        return _load_checked(path, limits or LoadLimits())
    except CheckpointError as exc:  # the checkpoint loader's refusals, same words
        raise TokenDataError(str(exc)) from exc


def _load_checked(path: Path, limits: LoadLimits) -> tuple[Tensor | np.ndarray, str]:
    from .checkpoints.loading import _check_safetensors_header, _torch_load
    from .checkpoints.tensors import check_tensors

    fmt = _detect(path)
    if fmt == "npy":
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r"), fmt
        except ValueError as exc:  # object arrays need pickle: refused
            raise TokenDataError(f"cannot load .npy without pickle: {exc}") from exc
        except (OSError, EOFError) as exc:
            raise TokenDataError(f"corrupt .npy file: {exc}") from exc
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        _check_safetensors_header(path, limits)
        try:
            return _pick(load_file(str(path), device="cpu"), "the safetensors file"), fmt
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise TokenDataError(f"corrupt safetensors file: {exc}") from exc
    obj = _torch_load(path, limits)  # refusals name what the pickle would have run
    if isinstance(obj, dict):
        obj = _pick({str(k): v for k, v in obj.items() if isinstance(v, Tensor)}, "the torch file")
    if not isinstance(obj, Tensor):
        raise TokenDataError(f"the torch file holds a {type(obj).__name__}, not a tensor")
    check_tensors({"tokens": obj}, path.stat().st_size, limits)  # before reading an element
    return obj, fmt


def _check(data: Tensor | np.ndarray) -> TokenInfo:
    if isinstance(data, np.ndarray):
        kind_ok = data.dtype.kind in "iu"
        dtype, shape = str(data.dtype), tuple(int(s) for s in data.shape)
    else:
        kind_ok = not (data.is_floating_point() or data.is_complex() or data.dtype == torch.bool)
        dtype, shape = str(data.dtype).removeprefix("torch."), tuple(data.shape)
    if not kind_ok:
        raise TokenDataError(f"token ids must be integers, got dtype {dtype}")
    if len(shape) not in (1, 2):
        raise TokenDataError(f"expected a 1-D token stream or (N, T) sequences, got shape {shape}")
    n = int(np.prod(shape))
    if n == 0:
        raise TokenDataError(f"the token tensor is empty (shape {shape})")
    lo, hi = (int(data.min()), int(data.max()))
    if lo < 0:
        raise TokenDataError(f"token ids must be >= 0, found {lo}")
    return TokenInfo(shape, dtype, n, hi, "")


def scan_token_file(path: str | Path, limits: LoadLimits | None = None) -> TokenInfo:
    """Validate a token file; raise ``TokenDataError`` naming the problem."""
    data, fmt = _load_any(Path(path), limits)
    info = _check(data)
    return TokenInfo(info.shape, info.dtype, info.n_tokens, info.max_token, fmt)


def load_token_file(path: str | Path, limits: LoadLimits | None = None) -> Tensor:
    """The token ids of a file as an int64 tensor (1-D or (N, T)), validated."""
    data, _ = _load_any(Path(path), limits)
    _check(data)
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.array(data, dtype=np.int64))  # a writable copy
    return data.to(torch.int64)


def token_windows(tokens: Tensor, seq_len: int, max_sequences: int | None = None) -> Tensor:
    """(N, seq_len) sequences: a stream is cut into consecutive windows; rows of (N, T)
    data are cut into T // seq_len windows each (never across rows)."""
    if seq_len < 2:
        raise TokenDataError(f"seq_len must be >= 2 (next-token loss), got {seq_len}")
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    rows, width = tokens.shape
    if width < seq_len:
        raise TokenDataError(
            f"sequences of {width} tokens are shorter than seq_len {seq_len}; lower seq_len"
        )
    per_row = width // seq_len
    windows = tokens[:, : per_row * seq_len].reshape(rows * per_row, seq_len)
    return windows[:max_sequences] if max_sequences is not None else windows
