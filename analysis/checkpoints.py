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
are inflated, safetensors headers go through the real (Rust) parser first, and walking the
unpickled object visits each container once, up to a count, a depth and a time.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import struct
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "ExpectedShapes",
    "CheckpointInfo",
    "CheckpointTooComplex",
    "CorruptCheckpoint",
    "KeyMapping",
    "LoadLimits",
    "ModelMismatch",
    "NotAStateDict",
    "PreparedCheckpoint",
    "UnsafeCheckpoint",
    "apply_key_mapping",
    "check_shapes",
    "detect_format",
    "extract_weights",
    "inspect_state_dict",
    "load_state_dict_file",
    "prepare_checkpoint",
    "resolve_prefix",
    "save_safetensors_bytes",
    "scan_checkpoint_file",
    "write_safetensors",
]

Format = Literal["safetensors", "torch"]

# Keys under which training scripts commonly nest the model's state_dict, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "params", "weights")
# Exponential-moving-average weights: taken only where no entry above holds the weights.
EMA_KEYS = ("ema", "model_ema", "ema_state_dict", "state_dict_ema")
# Prefixes wrappers add to every name: DistributedDataParallel / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
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


class CheckpointTooComplex(CheckpointError):
    """Inspecting the file would take more work than ``LoadLimits`` allow; it was stopped.

    ``visited`` (objects looked at) and ``inflated`` (archive bytes decompressed) say how
    much work was done before the refusal: the bound a denial-of-service test pins.
    """

    def __init__(self, message: str, *, visited: int = 0, inflated: int = 0) -> None:
        super().__init__(message)
        self.visited, self.inflated = visited, inflated


class ModelMismatch(CheckpointError):
    """The weights cannot be loaded into the task's model: names or shapes differ."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        *,
        shown: int = 5,
    ) -> None:
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped

        def few(items: list[str]) -> str:
            more = f", ... (+{len(items) - shown} more)" if len(items) > shown else ""
            return ", ".join(items[:shown]) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
        if misshaped:
            shapes = [f"{n} {list(got)} vs model {list(want)}" for n, got, want in misshaped]
            parts.append(f"{len(misshaped)} with the wrong shape: {few(shapes)}")
        super().__init__("the checkpoint does not fit the task's model: " + "; ".join(parts))


@dataclass(frozen=True)
class LoadLimits:
    """Bounds on the work of inspecting one file; past any of them it is refused."""

    max_objects: int = 1_000_000  # dict entries / containers looked at, in all
    max_depth: int = 64  # nesting of dicts inside the unpickled object
    # decompressed size of compressed zip members in all, and of the pickle itself
    max_inflated_bytes: int = 256 * 1024 * 1024
    max_seconds: float = 30.0  # wall time of the walk over the unpickled object


@dataclass(frozen=True)
class CheckpointInfo:
    n_tensors: int
    n_params: int
    non_finite: list[str] = field(default_factory=list)  # tensor names holding NaN/inf
    format: Format | None = None


@dataclass(frozen=True)
class KeyMapping:
    """How the file's content maps onto the model's state_dict names.

    ``nesting``: the top-level entry the weights were taken from (None: the whole file);
    ``strip_prefix``: removed from every name; ``dropped``: other top-level entries not kept
    (optimizer state, hyperparameters, ...).
    """

    nesting: str | None = None
    strip_prefix: str = ""
    dropped: tuple[str, ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.nesting is None and not self.strip_prefix and not self.dropped

    def to_dict(self) -> dict[str, Any]:
        return {
            "nesting": self.nesting,
            "strip_prefix": self.strip_prefix,
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> KeyMapping:
        data = data or {}
        return cls(
            nesting=data.get("nesting"),
            strip_prefix=str(data.get("strip_prefix") or ""),
            dropped=tuple(str(d) for d in data.get("dropped") or ()),
        )

    def describe(self) -> str:
        """One line for the checkpoints table, e.g. ``weights from 'state_dict'; ...``."""
        parts = []
        if self.nesting is not None:
            parts.append(f"weights from {self.nesting!r}")
        if self.strip_prefix:
            parts.append(f"stripped {self.strip_prefix!r}")
        if self.dropped:
            n = len(self.dropped)
            # optimizer state first: it is what a reader looks for
            names = sorted(self.dropped, key=lambda d: ("optim" not in d.lower(), d))
            shown = ", ".join(names[:4]) + (f" +{n - 4} more" if n > 4 else "")
            parts.append(f"dropped {shown} (weights only kept)")
        return "; ".join(parts)


@dataclass
class PreparedCheckpoint:
    """What an upload learns from a file: its summary, the key mapping, and (for torch files)
    the weights to store instead of the file (names as in the file, before the prefix)."""

    info: CheckpointInfo
    mapping: KeyMapping
    shapes: dict[str, tuple[int, ...]]  # model names (mapping applied) -> shape
    weights: dict[str, Tensor] | None = None


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


def load_state_dict_file(path: str | Path, limits: LoadLimits | None = None) -> dict[str, Tensor]:
    """Load a checkpoint file into a flat ``{name: tensor}`` dict (CPU), safely.

    Accepts safetensors and ``torch.save`` files; takes the weights out of a training
    checkpoint (``{"state_dict": ..., "optimizer": ...}``) and flattens nested dicts with
    dots. Names are as in the file: apply a ``KeyMapping`` to strip wrapper prefixes.
    Raises a ``CheckpointError`` subclass.
    """
    limits = limits or LoadLimits()
    fmt = detect_format(path)
    if fmt == "safetensors":
        _check_safetensors_header(path)
        return _load_safetensors(path)
    weights, _ = extract_weights(_torch_load(path, limits), limits=limits)
    return weights


def _load_safetensors(path: str | Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CorruptCheckpoint(f"corrupt safetensors file: {exc}") from exc


def _check_safetensors_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parse the header with the real loader (its rules: types, offsets with no gap or
    overlap, no trailing bytes, JSON depth); returns ``{name: shape}``. Reads no data."""
    from safetensors import SafetensorError, safe_open

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
    hparams), containers. Anything else is still refused by torch itself."""
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
        range,
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


def _check_zip_members(path: str | Path, limits: LoadLimits) -> None:
    """Refuse an archive whose compressed members would inflate past the limit, from the
    sizes its directory declares, before any member is read (a zip bomb costs nothing)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"corrupt torch checkpoint: {exc}") from exc
    inflated = 0
    for zi in infos:
        if zi.filename.endswith(".pkl") and zi.file_size > limits.max_inflated_bytes:
            raise CheckpointTooComplex(  # unpickling is the costly part, stored or not
                f"refused: the archive's pickle {zi.filename!r} would inflate to more than "
                f"{limits.max_inflated_bytes} bytes ({zi.file_size})",
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


def _torch_load(path: str | Path, limits: LoadLimits | None = None) -> Any:
    """``torch.load(weights_only=True)`` with the harmless globals allowed; mmap for zip
    files so big files stay on disk."""
    limits = limits or LoadLimits()
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_members(path, limits)
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


def _refusal_message(path: str | Path, torch_message: str, is_zip: bool) -> str:
    """Name what the pickle would have imported; found without running it (torch's own
    ``get_unsafe_globals_in_checkpoint`` for zip files, an opcode scan for legacy ones)."""
    names: list[str] = []
    try:
        if is_zip:  # member sizes were checked before torch.load
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        else:
            names = [g for g in _pickle_globals(path) if not g.startswith(_SAFE_MODULES)]
    except Exception:  # noqa: BLE001 - best effort, the refusal stands either way
        names = []
    m = _GLOBAL_IN_MSG.search(torch_message)
    if not names and m:
        names.append(m.group(1))
    if names:
        what = ", ".join(f"'{n}'" for n in dict.fromkeys(names))
        return (
            f"refused: the file is a pickle that would import/execute {what} when loaded; "
            "only tensors (and plain training-state values) are accepted"
        )
    return (
        "refused: the file is a pickle that torch.load(weights_only=True) cannot load safely "
        "(it needs objects other than tensors); save a plain state_dict or use safetensors"
    )


def _pickle_globals(path: str | Path) -> list[str]:
    """Globals a legacy (non-zip) pickle references (``module.name``), by opcode scan."""
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


# --- finding the weights ------------------------------------------------------------------


class _Budget:
    """Counts objects looked at across one inspection; refuses past the limits."""

    def __init__(self, limits: LoadLimits) -> None:
        self.limits, self.visited = limits, 0
        self.deadline = time.monotonic() + limits.max_seconds
        self._next_clock = 0

    def visit(self, n: int = 1) -> None:
        self.visited += n
        if self.visited > self.limits.max_objects:
            raise CheckpointTooComplex(
                f"refused: inspecting the file needs more than {self.limits.max_objects} "
                "objects; not a state_dict we can check",
                visited=self.visited,
            )
        if self.visited >= self._next_clock and time.monotonic() > self.deadline:
            raise CheckpointTooComplex(
                f"refused: inspecting the file took more than {self.limits.max_seconds:.0f} s",
                visited=self.visited,
            )
        if self.visited >= self._next_clock:
            self._next_clock = self.visited + 4096  # read the clock every 4096 objects


def _flatten_bounded(obj: Mapping, budget: _Budget) -> tuple[dict[str, Tensor], list[str]]:
    """``{dotted.name: tensor}`` of a nested mapping and the names of non-tensor leaves.

    Iterative; each dict is entered once (a dict met again, shared or self-referencing, is a
    non-tensor leaf: a state_dict is a tree), depth and count bounded.
    """
    out: dict[str, Tensor] = {}
    bad: list[str] = []
    entered: set[int] = {id(obj)}
    stack: list[tuple[Mapping, str, int]] = [(obj, "", 1)]
    while stack:
        node, prefix, depth = stack.pop()
        if depth > budget.limits.max_depth:
            raise CheckpointTooComplex(
                f"refused: dicts nested more than {budget.limits.max_depth} deep "
                f"(at {prefix[:80]!r})",
                visited=budget.visited,
            )
        items = list(node.items())
        budget.visit(len(items) + 1)
        children: list[tuple[Mapping, str, int]] = []
        for k, v in items:
            name = f"{prefix}{k}"
            if isinstance(v, Tensor):
                out[name] = v
            elif isinstance(v, Mapping):
                if id(v) in entered:  # not entered twice: names would repeat without end
                    bad.append(f"{name[:80]!r} (a dict met before: shared or self-referencing)")
                    continue
                entered.add(id(v))
                children.append((v, name + ".", depth + 1))
            else:
                bad.append(f"{name!r} ({type(v).__name__})")
        stack.extend(reversed(children))
    return out, bad


def _tensor_tree(obj: Any, budget: _Budget) -> dict[str, Tensor] | None:
    if not isinstance(obj, Mapping):
        return None
    flat, bad = _flatten_bounded(obj, budget)
    return flat if flat and not bad else None


def resolve_prefix(names: Iterable[str], expected: Iterable[str] | None = None) -> str:
    """The prefix to strip from every name so the names fit the model.

    ``module.`` and ``_orig_mod.`` (DDP, torch.compile) are stripped whenever every name has
    them; another shared first component (Lightning's ``model.``) only when the stripped
    names then equal ``expected`` exactly.
    """
    want = set(expected) if expected is not None else None
    cur, prefix = list(names), ""
    while cur and (want is None or set(cur) != want):
        p = next((p for p in WRAPPER_PREFIXES if all(n.startswith(p) for n in cur)), None)
        if p is None:
            break
        cur, prefix = [n[len(p) :] for n in cur], prefix + p
    if want is not None and cur and set(cur) != want and all("." in n for n in cur):
        heads = {n.split(".", 1)[0] for n in cur}
        if len(heads) == 1:
            head = heads.pop() + "."
            rest = [n[len(head) :] for n in cur]
            inner = resolve_prefix(rest, want)
            if {n[len(inner) :] for n in rest} == want:
                return prefix + head + inner
    return prefix


def apply_key_mapping(state_dict: Mapping[str, Tensor], mapping: KeyMapping) -> dict[str, Tensor]:
    """The state_dict under the model's names (the prefix removed from every name)."""
    p = mapping.strip_prefix
    if not p:
        return dict(state_dict)
    missing = [k for k in state_dict if not k.startswith(p)]
    if missing:
        raise NotAStateDict(f"names without the recorded prefix {p!r}: {missing[:5]}")
    return {k[len(p) :]: v for k, v in state_dict.items()}


def extract_weights(
    obj: Any,
    expected: Iterable[str] | None = None,
    *,
    limits: LoadLimits | None = None,
) -> tuple[dict[str, Tensor], KeyMapping]:
    """The weights in an unpickled checkpoint (names as in the file) and how they map.

    Candidates, in order: a lone wrapper entry (``{"model": {...}}``), the whole object when
    it is all tensors, each of ``WRAPPER_KEYS`` holding only tensors, then ``EMA_KEYS`` (only
    where none of the others does). With ``expected`` (the model's names) the first candidate
    that fits after prefix stripping wins; otherwise the first one.
    """
    budget = _Budget(limits or LoadLimits())
    if isinstance(obj, Tensor):
        raise NotAStateDict("the file holds a single tensor, not a state_dict (name -> tensor)")
    if not isinstance(obj, Mapping):
        raise NotAStateDict(
            f"the file holds a {type(obj).__name__}, not a state_dict (a dict of tensors)"
        )
    candidates: list[tuple[str | None, dict[str, Tensor]]] = []
    if len(obj) == 1 and next(iter(obj)) in (*WRAPPER_KEYS, *EMA_KEYS):
        key = next(iter(obj))
        inner = obj[key]
        if not isinstance(inner, Mapping):
            raise NotAStateDict("not a state_dict: the wrapped value is not a dict of tensors")
        if (flat := _tensor_tree(inner, budget)) is not None:
            candidates.append((str(key), flat))
    root, root_bad = _flatten_bounded(obj, budget)
    if root and not root_bad:
        candidates.append((None, root))
    primary = [k for k in WRAPPER_KEYS if k in obj]
    for key in primary:
        if (flat := _tensor_tree(obj[key], budget)) is not None:
            candidates.append((key, flat))
    if not any(n in primary for n, _ in candidates):
        for key in (k for k in EMA_KEYS if k in obj):
            if (flat := _tensor_tree(obj[key], budget)) is not None:
                candidates.append((key, flat))
    if not candidates:
        if not root_bad:
            raise NotAStateDict("not a state_dict: the file holds no tensors")
        shown = ", ".join(root_bad[:5]) + (
            f" (+{len(root_bad) - 5} more)" if len(root_bad) > 5 else ""
        )
        raise NotAStateDict(f"not a state_dict: entries that are not tensors: {shown}")
    want = set(expected) if expected is not None else None
    chosen = candidates[0]
    if want is not None:
        for cand in candidates:
            prefix = resolve_prefix(cand[1], want)
            if {k[len(prefix) :] for k in cand[1]} == want:
                chosen = cand
                break
    nesting, weights = chosen
    prefix = resolve_prefix(weights, want)
    dropped = tuple(str(k) for k in obj if nesting is not None and str(k) != nesting)
    return weights, KeyMapping(nesting, prefix, dropped)


def state_dict_from_object(obj: Any) -> dict[str, Tensor]:
    """Unwrap common wrappers and flatten nested dicts into ``{dotted.name: tensor}``."""
    return extract_weights(obj)[0]


class ExpectedShapes(dict[str, tuple[int, ...]]):
    """A model's ``{name: shape}`` as its checkpoints may present it.

    ``optional`` names may be absent (tied copies that ``save_pretrained`` writes once);
    ``rename`` maps a checkpoint name onto the model's (legacy names a library still writes,
    e.g. GPT-NeoX's ``embed_out`` for ``lm_head``). A plain dict means neither.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        optional: Iterable[str] = (),
        rename: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(shapes)
        self.optional = frozenset(optional)
        self.rename = rename


def check_shapes(
    shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Raise ``ModelMismatch`` naming missing, unexpected and mis-shaped tensors."""
    optional: frozenset[str] = getattr(expected, "optional", frozenset())
    rename: Callable[[str], str] | None = getattr(expected, "rename", None)
    if rename is not None:
        shapes = {rename(k): s for k, s in shapes.items()}
    missing = [k for k in expected if k not in shapes and k not in optional]
    unexpected = [k for k in shapes if k not in expected]
    misshaped = [
        (k, tuple(s), tuple(expected[k]))
        for k, s in shapes.items()
        if k in expected and tuple(s) != tuple(expected[k])
    ]
    if missing or unexpected or misshaped:
        raise ModelMismatch(missing, unexpected, misshaped)


def prepare_checkpoint(
    path: str | Path,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    *,
    limits: LoadLimits | None = None,
) -> PreparedCheckpoint:
    """Validate, inspect and map one uploaded file, with bounded work.

    ``expected`` (the task model's ``{name: shape}``) picks the weights and the prefix, and
    a file that cannot fit is refused with ``ModelMismatch``. Torch files come back with
    their ``weights`` so the caller stores those alone (as safetensors), not the pickle.
    """
    limits = limits or LoadLimits()
    fmt = detect_format(path)
    if fmt == "safetensors":
        file_shapes = _check_safetensors_header(path)
        prefix = resolve_prefix(file_shapes, expected)
        mapping = KeyMapping(strip_prefix=prefix)
        shapes = {k[len(prefix) :]: s for k, s in file_shapes.items()}
        if expected is not None:
            check_shapes(shapes, expected)
        info = _scan_safetensors(Path(path))
        return PreparedCheckpoint(
            CheckpointInfo(info.n_tensors, info.n_params, info.non_finite, fmt), mapping, shapes
        )
    weights, mapping = extract_weights(_torch_load(path, limits), expected, limits=limits)
    shapes = {k[len(mapping.strip_prefix) :]: tuple(v.shape) for k, v in weights.items()}
    if expected is not None:
        check_shapes(shapes, expected)
    info = inspect_state_dict(weights)
    return PreparedCheckpoint(
        CheckpointInfo(info.n_tensors, info.n_params, info.non_finite, fmt),
        mapping,
        shapes,
        weights,
    )


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


def scan_checkpoint_file(path: str | Path, limits: LoadLimits | None = None) -> CheckpointInfo:
    """Validate a checkpoint file and inspect it, without holding it in memory."""
    return prepare_checkpoint(path, limits=limits).info


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


_ST_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}  # fmt: skip


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
