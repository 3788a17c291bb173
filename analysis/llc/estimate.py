"""The public estimators: one checkpoint, many checkpoints, and the worker warm-up."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .budgets import (
    _chunk_progress,
    checkpoints_per_call,
    chunk_checkpoints,
    default_max_rows,
    first_batch,
    replayable,
)
from .config import LLCConfig, LossFn, ParamMask, Progress
from .result import LLCResult
from .sampler import _run_sgld
from .summary import summarise, with_companions

# ---------------------------------------------------------------------------- public API


def estimate_llc(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    param_mask: ParamMask | None = None,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> LLCResult:
    """Estimate the LLC of ``model`` at its current weights, all chains in one vmap.

    ``chance_loss``: the task's loss at chance level (e.g. ln(classes)), used by the
    verdict (``analysis.verdict``) to tell chains that left the basin. The model is only
    read: sampling runs in eval mode on a structural copy (see ``_structure_copy``).
    With ``config.bias_checks`` the same call also runs the chains at lr / 2 and at
    localization / 2 (``analysis.llc.summary``); the verdict compares them.

    ``loss_fn(model, batch)`` must be vmap-friendly (no ``.item()``, no data-dependent
    Python control flow). ``param_mask``: None frees every parameter; otherwise absent
    names are frozen, a None value frees the whole tensor and a bool tensor frees only
    its True entries (gradient, localization and noise are all masked).
    """
    sd = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return _estimate(model, loss_fn, batches, config, [sd], param_mask, progress, chance_loss)[0]


def _estimate(
    template: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    state_dicts: Sequence[Mapping[str, Tensor]],
    param_mask: ParamMask | None,
    progress: Progress | None,
    chance_loss: float | None,
) -> list[LLCResult]:
    """One sampler call for these checkpoints: the estimate's group and its checks."""
    lrs, gammas, (own,), (checks,) = with_companions([(config.lr, config.localization)], config)
    out = _run_sgld(
        template, loss_fn, batches, config, state_dicts, [param_mask] * len(lrs), lrs, gammas,
        progress,
    )  # fmt: skip
    share = out.elapsed_s / len(state_dicts)
    kwargs = {"companions": checks, "group_lrs": lrs, "group_localizations": gammas}
    return [
        summarise(out, k, own, config, share, chance_loss, **kwargs)
        for k in range(len(state_dicts))
    ]


def rows_per_checkpoint(config: LLCConfig) -> int:
    """Chain rows one checkpoint takes in a full-model estimate: its chains and, with
    ``bias_checks``, the checks' (not counting the reference row)."""
    groups = len(with_companions([(config.lr, config.localization)], config)[0])
    return groups * config.num_chains


# One vectorised batch's memory on a CPU. Not a memory limit but a cache one: past a few
# hundred MB of rows the step gets slower per row (bench/RESULTS.md, "LLC on devinterp's
# home turf": the sweep of rows per call on the NeoX case).
def checkpoint_tensors(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]], model: nn.Module | None
) -> tuple[nn.Module, list[Mapping[str, Tensor]]]:
    """A template module and, per checkpoint, the tensors the sampler reads (modules or
    state_dicts; with only state_dicts pass ``model``, a template of the architecture)."""
    template = model
    state_dicts: list[Mapping[str, Tensor]] = []
    for item in models_or_state_dicts:
        if isinstance(item, nn.Module):
            template = template or item
            state_dicts.append({**dict(item.named_parameters()), **dict(item.named_buffers())})
        else:
            state_dicts.append(item)
    if template is None:
        raise ValueError("pass model= (a template module) when giving only state_dicts")
    # The tensors the sampler reads: tied weights appear once (not state_dict()'s aliases).
    needed = {**dict(template.named_parameters()), **dict(template.named_buffers())}
    # Non-persistent buffers (rotary tables, causal masks) are never in a state_dict: the
    # template's are the checkpoints' too.
    kept = set(template.state_dict())
    derived = {n: b for n, b in template.named_buffers() if n not in kept}
    if derived:
        state_dicts = [{**derived, **sd} for sd in state_dicts]
    for name, t in needed.items():
        for i, sd in enumerate(state_dicts):
            if name not in sd or tuple(sd[name].shape) != tuple(t.shape):
                raise ValueError(f"checkpoint {i}: {name!r} missing or of a different shape")
    return template, state_dicts


def estimate_llc_many(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    model: nn.Module | None = None,
    param_mask: ParamMask | None = None,
    progress: Progress | None = None,
    max_batch: int | None = None,
    chance_loss: float | None = None,
) -> list[LLCResult]:
    """LLC at several checkpoints of one architecture, checkpoints x chains in one vmap.

    Items are modules or state_dicts; with only state_dicts pass ``model`` (a template
    of the architecture). ``max_batch`` caps the rows (checkpoints x (chains + 1)) per
    vmap call; checkpoints are chunked to fit (None: ``default_max_rows``). Every chunk
    replays the same seed and batch sequence, so a checkpoint's result is the same as from
    ``estimate_llc`` on it alone (bias checks included).
    """
    if not models_or_state_dicts:
        return []
    template, state_dicts = checkpoint_tensors(models_or_state_dicts, model)
    if max_batch is None:
        max_batch = default_max_rows(template, config)
    first, batches = first_batch(batches)
    rows = rows_per_checkpoint(config)
    per_ckpt = max(1, max_batch // (rows + 1))
    per_ckpt = checkpoints_per_call(template, loss_fn, first, config, rows, per_ckpt)
    chunks = chunk_checkpoints(state_dicts, per_ckpt)
    if len(chunks) > 1:
        batches = replayable(batches, config)
    results: list[LLCResult] = []
    for ci, chunk in enumerate(chunks):
        chunk_progress = _chunk_progress(progress, ci, len(chunks))
        results += _estimate(
            template, loss_fn, batches, config, chunk, param_mask, chunk_progress, chance_loss
        )
    return results


def warm_up(device: str = "cpu") -> float:
    """Run ``estimate_llc_many`` once on a toy model; returns the seconds it took.

    torch.func's first vmap/grad call in a process imports and sets up about a second of
    Python (bench/RESULTS.md, "The sampler warmed up before the first job"). A worker that calls
    this while it waits for work spares its first estimate that second; later calls take
    milliseconds.
    """
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the toy's init leaves the caller's RNG alone
        toy = nn.Sequential(nn.Embedding(3, 2), nn.Flatten(), nn.Linear(2, 2))
    batch = (torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))

    def loss(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(model(b[0]), b[1])

    config = LLCConfig(num_chains=1, num_draws=1, n_beta=1.0, device=device)
    estimate_llc_many([toy, toy], loss, [batch], config)
    return time.perf_counter() - t0
