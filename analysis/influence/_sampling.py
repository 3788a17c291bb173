"""One vectorised SGLD run per chunk of checkpoints, recording per-example losses at draws.

The influence lenses ride on the LLC sampler (``analysis.llc.sampler._run_sgld``): rows are
(checkpoint x weight group x chain) as for the restricted LLC, and at every draw step each
row also evaluates ``per_example_loss`` on fixed example sets (its *observables*). The
chunking, seeds and minibatch replay are those of ``estimate_llc_restricted_many``, so a
checkpoint's draws do not depend on which other checkpoints share its chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..llc import (
    LLCConfig,
    LossFn,
    ParamMask,
    Progress,
    checkpoint_tensors,
    checkpoints_per_call,
    chunk_checkpoints,
    default_max_rows,
    first_batch,
    largest_pass_rows,
    replayable,
    row_equivalents,
)
from ..llc.budgets import _chunk_progress
from ..llc.sampler import _run_sgld, _SamplerOutput, _structure_copy, _to_device

# per_example_loss(model, examples) -> (n,) per example, or (n, T) per token (NaN: no target)
PerExampleLoss = Callable[[nn.Module, Any], Tensor]


def _observable(per_example_loss: PerExampleLoss, examples: Any) -> Callable[[nn.Module], Tensor]:
    return lambda model: per_example_loss(model, examples)


def examples_on(examples: Any, config: LLCConfig) -> Any:
    """``examples`` on the sampling device, floating tensors in the sampling dtype."""
    return _to_device(examples, torch.device(config.device), config.torch_dtype)


def sample_observed(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    example_sets: Sequence[Any],
    per_example_loss: PerExampleLoss,
    group_masks: Sequence[ParamMask | None],
    model: nn.Module | None = None,
    max_rows: int | None = None,
    progress: Progress | None = None,
    observe_every: int = 1,
) -> Iterator[tuple[list[Mapping[str, Tensor]], _SamplerOutput]]:
    """Run the sampler over ``models_or_state_dicts`` in chunks; yield each chunk's
    checkpoint tensors and sampler output, whose ``observed[i]`` is (K, G, C, D', n_i, ...):
    ``per_example_loss`` on ``example_sets[i]`` at every row and every ``observe_every``-th
    draw (D' of the D draws)."""
    if not isinstance(observe_every, int) or observe_every < 1:
        raise ValueError(f"observe_every must be an integer >= 1, got {observe_every!r}")
    template, state_dicts = checkpoint_tensors(models_or_state_dicts, model)
    if max_rows is None:
        max_rows = default_max_rows(template, config)
    sets = [examples_on(e, config) for e in example_sets]
    joined = _joined(sets)
    if joined is None:
        observables = [_observable(per_example_loss, e) for e in sets]
    else:  # one forward over every set: fewer, larger ops per observed draw
        observables = [_observable(per_example_loss, joined)]
        sizes = [_rows(e) for e in sets]
    masks = list(group_masks)
    per_chunk = max(1, int(max_rows // row_equivalents(template, masks, config.num_chains)))
    first, batches = first_batch(batches)
    per_chunk = checkpoints_per_call(
        template, loss_fn, first, config, largest_pass_rows(template, masks, config), per_chunk
    )
    chunks = chunk_checkpoints(state_dicts, per_chunk)
    if len(chunks) > 1:  # every chunk replays the same minibatches
        batches = replayable(batches, config)
    for ci, chunk in enumerate(chunks):
        out = _run_sgld(
            template, loss_fn, batches, config, chunk, masks,
            [config.lr] * len(masks), [config.localization] * len(masks),
            _chunk_progress(progress, ci, len(chunks)), observables=observables,
            observe_every=observe_every,
        )  # fmt: skip
        if joined is not None:  # back to one (K, G, C, D', n_i, ...) tensor per set
            out.observed = list(torch.split(out.observed[0], sizes, dim=4))
        yield list(chunk), out


def _rows(examples: Any) -> int:
    return int((examples[0] if isinstance(examples, tuple | list) else examples).shape[0])


def _joined(sets: Sequence[Any]) -> Any | None:
    """The example sets as one batch (each tensor concatenated along its first dim), where
    they are alike: tensors, or tuples/lists of tensors, of the same dtypes and trailing
    shapes; None otherwise (or for a single set). Per-example losses do not depend on the
    other examples of a batch (eval mode), so the joined batch's losses split back exactly."""
    if len(sets) < 2:
        return None

    def parts(e: Any) -> list[Tensor] | None:
        items = list(e) if isinstance(e, tuple | list) else [e]
        return items if all(isinstance(t, Tensor) and t.dim() >= 1 for t in items) else None

    first = parts(sets[0])
    if first is None or any(t.shape[0] != first[0].shape[0] for t in first):
        return None
    for e in sets[1:]:
        other = parts(e)
        if (
            other is None
            or type(e) is not type(sets[0])
            or len(other) != len(first)
            or any(
                a.dtype != b.dtype or a.shape[1:] != b.shape[1:] or a.shape[0] != other[0].shape[0]
                for a, b in zip(first, other, strict=True)
            )
        ):
            return None
    cat = [torch.cat([parts(e)[i] for e in sets]) for i in range(len(first))]  # type: ignore[index]
    if isinstance(sets[0], Tensor):
        return cat[0]
    return type(sets[0])(cat)


def finite_chains(draws: Tensor, weights_finite: Tensor) -> list[int]:
    """Chains whose weights stayed finite and whose recorded losses are finite wherever
    they are at any draw (a NaN that marks a position without a target is not a failure).

    ``draws`` (C, D, ...), ``weights_finite`` (C,) bool.
    """
    flat = draws.flatten(2)  # (C, D, m)
    real = ~torch.isnan(flat).all(dim=(0, 1))  # positions with a value at some draw
    ok = torch.isfinite(flat[:, :, real]).all(dim=(1, 2)) & weights_finite.bool()
    return [int(c) for c in torch.nonzero(ok).flatten()]


@torch.no_grad()
def at_w_star(
    template: nn.Module,
    state: Mapping[str, Tensor],
    per_example_loss: PerExampleLoss,
    examples: Any,
    config: LLCConfig,
) -> Tensor:
    """``per_example_loss`` at the checkpoint itself (float64, on the CPU), run as the
    sampler runs (eval-mode structure copy, weights swapped in)."""
    device, dtype = torch.device(config.device), config.torch_dtype
    module = _structure_copy(template)
    tensors = {
        n: t.detach().to(device, dtype if t.is_floating_point() else None) for n, t in state.items()
    }
    ex = examples_on(examples, config)

    class _Call(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self) -> Tensor:
            return per_example_loss(self.inner, ex)

    call = _Call()
    out = functional_call(call, {"inner." + n: t for n, t in tensors.items()}, ())
    return out.double().cpu()
