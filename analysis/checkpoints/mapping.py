"""How a file's names map onto the model's: nesting and wrapper prefixes (no torch needed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

from .errors import NotAStateDict

# Keys under which training scripts commonly nest the model's state_dict, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "params", "weights")
# Exponential-moving-average weights: taken only where no entry above holds the weights.
EMA_KEYS = ("ema", "model_ema", "ema_state_dict", "state_dict_ema")
# Prefixes wrappers add to every name: DistributedDataParallel / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
