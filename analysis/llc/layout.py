"""How one sampler call lays out its rows' weights: passes of groups, one flat buffer each.

A row is one (checkpoint, group, chain). Groups that free the same tensors share a *pass*;
a pass keeps its rows' free tensors end to end in one flat buffer of shape (K, G_p * C, N)
(checkpoints, the pass's groups x chains, the pass's free coordinates), and the model sees
views of it. The SGLD update is then a handful of whole-buffer operations whatever the
number of tensors, the gradient arrives flat (the backward of one ``split``), and low-
precision sampling keeps its master weights in float32 by casting the one buffer.

The noise of a step is one (C, total) draw over every parameter of the model in module order
(``NoiseLayout``): a tensor's noise sits at a fixed place in it, so it does not depend on
which other tensors a call frees, and restricted runs reproduce a masked ``estimate_llc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import LLCConfig, ParamMask


def _free_names(named: Mapping[str, Tensor], group_masks: Sequence[ParamMask | None]) -> list[str]:
    """Parameters some group frees (part of), in module order; everything else is fixed."""
    return [n for n in named if any(m is None or n in m for m in group_masks)]


def _passes(
    group_masks: Sequence[ParamMask | None], free_names: Sequence[str]
) -> list[tuple[list[int], list[str]]]:
    """Groups that free the same tensors share a pass: ``[(groups, tensor names)]``.

    A pass carries per-row copies of only its own tensors; the rest stay at w*, one copy
    per checkpoint, so the forward up to the first free tensor is one matmul for all of a
    checkpoint's rows and the backward stops there (see ``_run_sgld``).
    """
    by_names: dict[tuple[str, ...], list[int]] = {}
    for g, m in enumerate(group_masks):
        names = tuple(free_names) if m is None else tuple(n for n in free_names if n in m)
        by_names.setdefault(names, []).append(g)
    return [(groups, list(names)) for names, groups in by_names.items()]


def row_equivalents(
    model: nn.Module, group_masks: Sequence[ParamMask | None], num_chains: int
) -> float:
    """One checkpoint's memory in a restricted run, in whole-model rows: its largest pass's
    per-row copies (groups x chains x that pass's tensors) plus its frozen w* and its
    reference row. Chunking by this instead of groups x chains fits more checkpoints in a
    batch when groups free only part of the model."""
    named = dict(model.named_parameters())
    free_names = _free_names(named, group_masks)
    total = max(1, sum(p.numel() for p in named.values()))
    largest = max(
        len(groups) * num_chains * sum(named[n].numel() for n in names)
        for groups, names in _passes(group_masks, free_names)
    )
    return largest / total + 2


def largest_pass_rows(
    model: nn.Module, group_masks: Sequence[ParamMask | None], config: LLCConfig
) -> int:
    """A checkpoint's rows in its largest pass (groups x chains): those step together."""
    free_names = _free_names(dict(model.named_parameters()), group_masks)
    return max(len(g) for g, _ in _passes(group_masks, free_names)) * config.num_chains


def _group_mask_tensor(masks: Sequence[ParamMask | None], name: str, p: Tensor) -> Tensor | None:
    """(G, *shape) float mask for one parameter across groups, or None if all-free."""
    if all(m is None or (name in m and m[name] is None) for m in masks):
        return None
    rows = []
    for m in masks:
        if m is None or (name in m and m[name] is None):
            rows.append(torch.ones_like(p))
        elif name in m:
            mask = torch.as_tensor(m[name], device=p.device)
            if mask.shape != p.shape or mask.dtype != torch.bool:
                raise ValueError(
                    f"mask for {name!r} must be a bool tensor of shape {tuple(p.shape)}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            rows.append(mask.to(p.dtype))
        else:
            rows.append(torch.zeros_like(p))
    return torch.stack(rows)


@dataclass(frozen=True)
class NoiseLayout:
    """Every parameter of the model end to end, in module order: where each tensor's
    coordinates sit in a step's one (C, total) noise draw."""

    offsets: dict[str, int]
    total: int

    @classmethod
    def of(cls, named: Mapping[str, Tensor]) -> NoiseLayout:
        offsets, at = {}, 0
        for n, p in named.items():
            offsets[n] = at
            at += p.numel()
        return cls(offsets, at)

    def coordinates(
        self, named: Mapping[str, Tensor], names: Sequence[str], device: torch.device
    ) -> slice | Tensor:
        """The columns of ``names`` (in that order): a slice when they are adjacent in the
        layout (no copy), else an index."""
        spans = [(self.offsets[n], self.offsets[n] + named[n].numel()) for n in names]
        if all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)):
            return slice(spans[0][0], spans[-1][1])
        return torch.cat([torch.arange(a, b, device=device) for a, b in spans])


def _index(groups: Sequence[int], device: torch.device) -> slice | Tensor:
    """Where ``groups`` sit among a call's groups: a slice when consecutive, else an index."""
    if list(groups) == list(range(groups[0], groups[0] + len(groups))):
        return slice(groups[0], groups[0] + len(groups))
    return torch.tensor(list(groups), device=device)


@dataclass
class Pass:
    """One vmap-ed pass of ``_run_sgld``: its groups' rows and their free tensors.

    ``flat`` holds the rows' free tensors end to end in the master dtype (float64 when
    sampling in float64, else float32): (K, G_p * C, N), row r of checkpoint k being group
    ``groups[r // C]``, chain ``r % C``. The update's coefficients are shaped to broadcast
    against its (K, G_p, C, N) view, each with the group's mask folded in (0 where a
    coordinate is frozen, so a frozen coordinate never moves).
    """

    groups: list[int]
    index: slice | Tensor  # the groups, to write this pass's rows into (K, G, C)
    names: list[str]
    sizes: list[int]
    shapes: list[torch.Size]
    flat: Tensor  # (K, G_p * C, N) master weights
    fixed: dict[str, Tensor]  # tensors no group of the pass frees, at w*: (K, *shape)
    anchor: Tensor  # (K, 1, 1, N) w*
    mask: Tensor | None  # (1, G_p, 1, N) or None (every coordinate free)
    drift: Tensor  # -eps / 2 * n_beta, masked: multiplies grad L_m(w)
    pull: Tensor  # -eps / 2 * gamma, masked: multiplies w - w*
    noise: Tensor  # sqrt(eps), masked: multiplies N(0, 1)
    noise_at: slice | Tensor  # the pass's columns in the step's noise draw
    keep: Tensor = field(init=False)  # 1 + pull: w + pull (w - w*) = keep * w - pull * w*
    shift: Tensor = field(init=False)  # -pull * w*
    square_avg: Tensor | None = None  # RMSprop's running mean of squared gradients

    def __post_init__(self) -> None:
        self.keep = 1 + self.pull
        self.shift = -self.pull * self.anchor

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """``flat`` (K, rows, N) as the pass's tensors, each (K, rows, *shape), no copy."""
        K, R = flat.shape[:2]
        pieces = flat.split(self.sizes, dim=-1)
        return {
            n: p.view(K, R, *s) for n, p, s in zip(self.names, pieces, self.shapes, strict=True)
        }

    def unflatten(self, row: Tensor) -> dict[str, Tensor]:
        """One row's (N,) flat weights as its tensors (inside the vmapped step: the
        gradient with respect to ``row`` is the concatenation of the tensors' gradients)."""
        pieces = row.split(self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes, strict=True)}


def build_passes(
    named: Mapping[str, Tensor],
    w_star: Mapping[str, Tensor],
    group_masks: Sequence[ParamMask | None],
    group_values: Mapping[str, Sequence[float]],
    num_chains: int,
    master: torch.dtype,
    rmsprop: bool,
) -> tuple[list[Pass], list[int]]:
    """The call's passes and, per group, its number of free coordinates.

    ``w_star``: every tensor at every checkpoint, (K, *shape) in the master dtype.
    ``group_values``: per group its ``lr``, ``gamma`` and ``nbeta``.
    """
    K, C = next(iter(w_star.values())).shape[0], num_chains
    device = next(iter(w_star.values())).device
    free_names = _free_names(named, group_masks)
    layout = NoiseLayout.of(named)
    num_free = [0] * len(group_masks)
    passes: list[Pass] = []
    for groups, names in _passes(group_masks, free_names):
        Gp = len(groups)
        masks = []
        for n in names:
            p = named[n].detach().to(device, master)
            gm = _group_mask_tensor([group_masks[g] for g in groups], n, p)
            masks.append(None if gm is None else gm.reshape(Gp, -1))
            for i, g in enumerate(groups):
                num_free[g] += p.numel() if gm is None else int(gm[i].sum().item())
        sizes = [named[n].numel() for n in names]
        anchor = torch.cat([w_star[n].reshape(K, -1) for n in names], dim=1)  # (K, N)
        mask = None
        if any(m is not None for m in masks):
            mask = torch.cat(
                [torch.ones(Gp, s, device=device, dtype=master) if m is None else m
                 for m, s in zip(masks, sizes, strict=True)], dim=1,
            ).view(1, Gp, 1, -1)  # fmt: skip

        def per_group(key: str, groups: list[int] = groups) -> Tensor:
            values = [group_values[key][g] for g in groups]
            return torch.tensor(values, device=device, dtype=master).view(1, len(groups), 1, 1)

        eps, gamma, nbeta = per_group("lr"), per_group("gamma"), per_group("nbeta")
        drift, pull, noise = -0.5 * eps * nbeta, -0.5 * eps * gamma, eps.sqrt()
        if mask is not None and not rmsprop:  # RMSprop masks its whole step instead
            drift, pull, noise = drift * mask, pull * mask, noise * mask
        passes.append(
            Pass(
                groups=groups,
                index=_index(groups, device),
                names=names,
                sizes=sizes,
                shapes=[named[n].shape for n in names],
                flat=anchor.unsqueeze(1).repeat(1, Gp * C, 1),
                fixed={},  # filled by the caller, in the compute dtype
                anchor=anchor.view(K, 1, 1, -1),
                mask=mask,
                drift=drift,
                pull=pull,
                noise=noise,
                noise_at=layout.coordinates(named, names, device),
                square_avg=torch.zeros(K, Gp * C, sum(sizes), device=device, dtype=master)
                if rmsprop
                else None,
            )
        )
    return passes, num_free
