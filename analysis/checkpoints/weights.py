"""Finding the weights in a loaded object and checking them against the task's model."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from .errors import CheckpointTooComplex, ModelMismatch, NotAStateDict
from .formats import CheckpointInfo, LoadLimits, detect_format
from .loading import _check_safetensors_header, _load_safetensors, _torch_load
from .mapping import EMA_KEYS, WRAPPER_KEYS, KeyMapping, resolve_prefix
from .scan import _scan_safetensors, inspect_state_dict
from .tensors import check_tensors


@dataclass
class PreparedCheckpoint:
    """What an upload learns from a file: its summary, the key mapping, and (for torch files)
    the weights to store instead of the file (names as in the file, before the prefix)."""

    info: CheckpointInfo
    mapping: KeyMapping
    shapes: dict[str, tuple[int, ...]]  # model names (mapping applied) -> shape
    weights: dict[str, Tensor] | None = None


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
        file_shapes = _check_safetensors_header(path, limits)
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
    check_tensors(weights, os.path.getsize(path), limits)  # before any element is read
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
        _check_safetensors_header(path, limits)
        return _load_safetensors(path)
    weights, _ = extract_weights(_torch_load(path, limits), limits=limits)
    check_tensors(weights, os.path.getsize(path), limits)
    return weights


def scan_checkpoint_file(path: str | Path, limits: LoadLimits | None = None) -> CheckpointInfo:
    """Validate a checkpoint file and inspect it, without holding it in memory."""
    return prepare_checkpoint(path, limits=limits).info
