"""Weight-restricted and data-restricted LLC.

A *weight group* is a ``ParamMask``: parameter name -> None (whole tensor free) or a
bool tensor (only True entries free); absent names are frozen. Restricted estimates for
many groups run together, not as a Python loop of full estimates: groups that free the
same tensors (a layer and its heads) are rows of one vmap-ed pass with their masks stacked,
and each row carries copies of only its pass's tensors (see ``analysis.llc._run_sgld``), so
restricting to the last layer of a large model neither copies nor differentiates the rest.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .llc import (
    LLCConfig,
    LLCResult,
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
    rows_for_budget,
)
from .llc.budgets import _chunk_progress
from .llc.sampler import _run_sgld, _SamplerOutput
from .llc.summary import summarise

__all__ = [
    "ParamMask",
    "attention_head_masks",
    "estimate_llc_data_restricted",
    "estimate_llc_data_restricted_many",
    "estimate_llc_restricted",
    "estimate_llc_restricted_many",
    "mask_by_pattern",
    "rows_for_budget",
]


def mask_by_pattern(model: nn.Module, pattern: str, *, regex: bool = False) -> ParamMask:
    """Free every parameter whose name matches ``pattern`` (a glob like ``"blocks.0.*"``,
    or a regular expression searched in the name with ``regex=True``)."""
    names = [n for n, _ in model.named_parameters()]
    if regex:
        matched = [n for n in names if re.search(pattern, n)]
    else:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not matched:
        raise ValueError(f"no parameter matches {pattern!r}; parameters: {names}")
    return {n: None for n in matched}


def _block(p: Tensor, dim: int, start: int, stop: int) -> Tensor:
    """Bool mask of ``p``'s shape, True on [start, stop) along ``dim``."""
    mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
    index = [slice(None)] * p.dim()
    index[dim] = slice(start, stop)
    mask[tuple(index)] = True
    return mask


def attention_head_masks(
    model: nn.Module,
    *,
    qkv_param: str | Sequence[str],
    out_param: str,
    n_heads: int,
    d_head: int,
    heads_first: bool = False,
    qkv_bias: str | Sequence[str] | None = None,
    prefix: str | None = None,
) -> dict[str, ParamMask]:
    """One ``ParamMask`` per head of one attention layer, keyed ``"{prefix}head{h}"``.

    Supported layouts:
    - fused ``qkv_param`` (one name), shape (3 * n_heads * d_head, d_model), like
      ``nn.MultiheadAttention.in_proj_weight``: head h owns rows h*d_head:(h+1)*d_head of
      each of the Q, K, V thirds;
    - separate W_Q, W_K, W_V (three names) in ``nn.Linear`` layout (n_heads * d_head,
      d_model): head h owns rows h*d_head:(h+1)*d_head;
    - ``heads_first=True``: separate tensors with the head as dim 0, e.g. TransformerLens
      W_Q (n_heads, d_model, d_head) and W_O (n_heads, d_head, d_model): head h owns [h].
    The output matrix (``out_param``) is (d_model, n_heads * d_head) as in ``nn.Linear``
    (head h owns columns h*d_head:(h+1)*d_head) unless ``heads_first``. Biases given in
    ``qkv_bias`` (same layout as ``qkv_param``, 1-D) are included; the output bias is
    shared by all heads and never included.
    """
    params = dict(model.named_parameters())
    prefix = (
        (out_param.rsplit(".", 1)[0] + ".")
        if prefix is None and "." in out_param
        else (prefix or "")
    )
    qkv = [qkv_param] if isinstance(qkv_param, str) else list(qkv_param)
    bias = [] if qkv_bias is None else ([qkv_bias] if isinstance(qkv_bias, str) else list(qkv_bias))
    for name in [*qkv, *bias, out_param]:
        if name not in params:
            raise ValueError(f"unknown parameter {name!r}")
    if len(qkv) not in (1, 3) or (heads_first and len(qkv) != 3):
        raise ValueError("qkv_param must be one fused name or three names (W_Q, W_K, W_V)")
    width = n_heads * d_head
    masks: dict[str, ParamMask] = {}
    for h in range(n_heads):
        mask: ParamMask = {}
        for name in [*qkv, *bias]:
            p = params[name]
            if heads_first:
                mask[name] = _block(p, 0, h, h + 1)
            elif len(qkv) == 1:
                if p.shape[0] != 3 * width:
                    raise ValueError(
                        f"{name!r}: expected dim 0 of size {3 * width}, got {tuple(p.shape)}"
                    )
                m = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
                for j in range(3):
                    m |= _block(p, 0, j * width + h * d_head, j * width + (h + 1) * d_head)
                mask[name] = m
            else:
                if p.shape[0] != width:
                    raise ValueError(
                        f"{name!r}: expected dim 0 of size {width}, got {tuple(p.shape)}"
                    )
                mask[name] = _block(p, 0, h * d_head, (h + 1) * d_head)
        o = params[out_param]
        if heads_first:
            mask[out_param] = _block(o, 0, h, h + 1)
        else:
            if o.shape[-1] != width:
                raise ValueError(f"{out_param!r}: expected last dim {width}, got {tuple(o.shape)}")
            mask[out_param] = _block(o, o.dim() - 1, h * d_head, (h + 1) * d_head)
        masks[f"{prefix}head{h}"] = mask
    return masks


def _by_checkpoint(
    out: _SamplerOutput,
    n_checkpoints: int,
    names: list[str],
    config: LLCConfig,
    chance_loss: float | None,
) -> list[dict[str, LLCResult]]:
    """A sampler run's results, ``{group name: LLCResult}`` per checkpoint; each result
    gets an even share of the run's time. Restricted estimates carry no bias checks (they
    would triple the rows of the largest runs); the full-model estimate's checks speak for
    the setting."""
    share = out.elapsed_s / (n_checkpoints * len(names))
    return [
        {n: summarise(out, k, g, config, share, chance_loss) for g, n in enumerate(names)}
        for k in range(n_checkpoints)
    ]


def estimate_llc_restricted(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    masks: dict[str, ParamMask],
    *,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> dict[str, LLCResult]:
    """Weight-restricted LLC for every group in ``masks``, all groups in one vmap batch.

    All groups see the same minibatches and (masked) noise, and share one w* reference
    row, so differences between groups are not blurred by sampling noise.
    """
    if not masks:
        return {}
    names = list(masks)
    sd = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    out = _run_sgld(
        model, loss_fn, batches, config, [sd], [masks[n] for n in names],
        [config.lr] * len(names), [config.localization] * len(names), progress,
    )  # fmt: skip
    return _by_checkpoint(out, 1, names, config, chance_loss)[0]


def estimate_llc_data_restricted(
    model: nn.Module,
    loss_fn: LossFn,
    subsets: dict[str, Iterable[Any]],
    config: LLCConfig,
    *,
    param_mask: ParamMask | None = None,
    progress: Progress | None = None,
) -> dict[str, LLCResult]:
    """LLC with the loss taken on each data subset; ``estimate_llc_data_restricted_many``
    on one checkpoint (each subset's result equals ``estimate_llc`` on that subset)."""
    return estimate_llc_data_restricted_many(
        [model], loss_fn, subsets, config, param_mask=param_mask, progress=progress
    )[0]


def estimate_llc_data_restricted_many(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    loss_fn: LossFn,
    subsets: Mapping[str, Iterable[Any]],
    config: LLCConfig,
    *,
    model: nn.Module | None = None,
    param_mask: ParamMask | None = None,
    max_rows: int | None = None,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> list[dict[str, LLCResult]]:
    """Data-restricted LLC for every subset at several checkpoints, in one sampler run.

    Each subset is a group of rows drawing minibatches from its own data (checkpoint x
    subset x chain rows, one vmap-ed step), not a run of its own: the same arithmetic as
    ``estimate_llc_many`` per subset, with the per-step overhead paid once. That overhead
    is most of a step for one checkpoint (bench/RESULTS.md, "Data subsets in one sampler
    run"). ``config.num_samples``/``n_beta`` are used as
    given: n_beta is a property of the posterior (the training set), not of the subset the
    loss is evaluated on. Each checkpoint's results equal ``estimate_llc`` on each subset
    alone. Returns one ``{subset: LLCResult}`` per checkpoint, in order.
    """
    if not models_or_state_dicts or not subsets:
        return [{} for _ in models_or_state_dicts]
    names = list(subsets)
    template, state_dicts = checkpoint_tensors(models_or_state_dicts, model)
    if max_rows is None:
        max_rows = default_max_rows(template, config)
    rows = len(names) * (config.num_chains + 1)  # chains and reference rows per checkpoint
    firsts, streams = zip(*(first_batch(subsets[n]) for n in names), strict=True)
    per_chunk = max(1, max_rows // rows)
    per_chunk = checkpoints_per_call(
        template, loss_fn, firsts[0], config, len(names) * config.num_chains, per_chunk
    )
    chunks = chunk_checkpoints(state_dicts, per_chunk)
    if len(chunks) > 1:  # every chunk replays the same minibatches
        streams = tuple(replayable(b, config) for b in streams)
    results: list[dict[str, LLCResult]] = []
    for ci, chunk in enumerate(chunks):
        out = _run_sgld(
            template, loss_fn, [], config, chunk, [param_mask] * len(names),
            [config.lr] * len(names), [config.localization] * len(names),
            _chunk_progress(progress, ci, len(chunks)), group_batches=streams,
        )  # fmt: skip
        results += _by_checkpoint(out, len(chunk), names, config, chance_loss)
    return results


def estimate_llc_restricted_many(
    models_or_state_dicts: Sequence[nn.Module | dict[str, Tensor]],
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    masks: dict[str, ParamMask],
    *,
    model: nn.Module | None = None,
    max_rows: int | None = None,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> list[dict[str, LLCResult]]:
    """Weight-restricted LLC for every group at several checkpoints of one architecture.

    Rows are (checkpoint x group x chain), advanced together (one vmap-ed pass per set of
    freed tensors, see ``analysis.llc._run_sgld``); checkpoints are chunked so that a
    chunk's memory stays within ``max_rows`` whole-model rows (``row_equivalents`` per
    checkpoint; None: ``default_max_rows``; at least one checkpoint per chunk). Every chunk
    replays the same seed and minibatches and the noise is shared across checkpoints, so
    each checkpoint's results equal ``estimate_llc_restricted`` on it alone. Returns one
    ``{group: LLCResult}`` per checkpoint, in order.
    """
    if not models_or_state_dicts or not masks:
        return [{} for _ in models_or_state_dicts]
    names = list(masks)
    template, state_dicts = checkpoint_tensors(models_or_state_dicts, model)
    if max_rows is None:
        max_rows = default_max_rows(template, config)
    group_masks = [masks[n] for n in names]
    per_ckpt = row_equivalents(template, group_masks, config.num_chains)
    per_chunk = max(1, int(max_rows // per_ckpt))
    first, batches = first_batch(batches)
    per_chunk = checkpoints_per_call(
        template,
        loss_fn,
        first,
        config,
        largest_pass_rows(template, group_masks, config),
        per_chunk,
    )
    chunks = chunk_checkpoints(state_dicts, per_chunk)
    if len(chunks) > 1:  # every chunk replays the same minibatches
        batches = replayable(batches, config)
    results: list[dict[str, LLCResult]] = []
    for ci, chunk in enumerate(chunks):
        chunk_progress = _chunk_progress(progress, ci, len(chunks))
        out = _run_sgld(
            template, loss_fn, batches, config, chunk, [masks[n] for n in names],
            [config.lr] * len(names), [config.localization] * len(names), chunk_progress,
        )  # fmt: skip
        results += _by_checkpoint(out, len(chunk), names, config, chance_loss)
    return results
