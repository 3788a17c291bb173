"""How many rows and checkpoints fit one vectorised call (memory and cache budgets)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .config import LLCConfig, LossFn, Progress
from .sampler import _LossModule, _structure_copy, _to_device

CPU_BATCH_BYTES = 512 * 1024 * 1024


def rows_for_budget(model: nn.Module, config: LLCConfig, budget_bytes: int) -> int:
    """How many SGLD rows (one checkpoint x group x chain each) fit in ``budget_bytes``.

    A row holds its parameters, their gradient, noise, the update and autograd/vmap
    temporaries: about 8 parameter-sized tensors, plus the activations of one minibatch
    (guessed as 4 parameter-sized tensors for the small models this is made for). A rough
    guess on purpose: it only decides how checkpoints are chunked, never what is computed.
    """
    n = sum(p.numel() for p in model.parameters())
    per_row = 12 * n * torch.tensor([], dtype=config.torch_dtype).element_size()
    return max(1, int(budget_bytes // max(per_row, 1)))


def default_max_rows(model: nn.Module, config: LLCConfig) -> int:
    """Rows per vmap call: on a CPU what fits ``CPU_BATCH_BYTES``; on CUDA about a third
    of free memory, assuming ~8 parameter-sized tensors per row plus activations."""
    if not config.device.startswith("cuda") or not torch.cuda.is_available():
        return rows_for_budget(model, config, CPU_BATCH_BYTES)
    free_bytes, _ = torch.cuda.mem_get_info(torch.device(config.device))
    n = sum(p.numel() for p in model.parameters())
    per_row = 8 * n * torch.tensor([], dtype=config.torch_dtype).element_size()
    return max(config.num_chains + 1, int(free_bytes / 3 / max(per_row, 1)))


# Activations of one vmap call on a CPU past which more checkpoints per call stop paying.
# Small models' steps are per-op overhead, which batching removes (the demo's checkpoints
# cost far less each 16 to a call than one at a time); a model whose rows already save tens
# of MB for the backward is compute-bound at one checkpoint, and more rows only add page
# faults: the attention_lm task (10.7 MB per row) ran slower per checkpoint at 16 per call
# than at 1 (bench/RESULTS.md, "Checkpoints per vmap call, capped by activations").
CPU_ACTIVATION_BYTES = 128 * 1024 * 1024


_EMPTY = object()


def first_batch(batches: Iterable[Any]) -> tuple[Any, Iterable[Any]]:
    """The first minibatch, and ``batches`` still holding it (a one-shot iterator is
    re-chained; a list or other re-iterable is returned as is)."""
    it = iter(batches)
    first = next(it, _EMPTY)
    if first is _EMPTY:
        raise ValueError("batches is empty")
    if it is batches:
        return first, itertools.chain([first], it)
    return first, batches


def activation_bytes(model: nn.Module, loss_fn: LossFn, batch: Any, config: LLCConfig) -> int:
    """Bytes autograd keeps for the backward of one row's loss on ``batch``: the tensors
    saved by its forward, parameters not counted (a row's own copies are in ``row_equivalents``).

    Scaled from the model's dtype to the sampling dtype's size, float32's at least.
    Run as the sampler runs it, on a structure copy in eval mode with the weights swapped in,
    so the caller's module is neither switched to eval nor written to (BatchNorm statistics).
    """
    dtype = next(model.parameters()).dtype
    probe = _LossModule(_structure_copy(model), loss_fn)
    weights = {
        n: t.detach().requires_grad_(t.is_floating_point()) for n, t in model.named_parameters()
    }
    own = {t.untyped_storage().data_ptr() for t in weights.values()}  # and views of them
    saved = [0]

    def pack(t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in own:
            saved[0] += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batch = _to_device(batch, torch.device("cpu"), dtype)
        probe.loss_with({**weights, **dict(model.named_buffers())}, batch)
    # Counted at no less than float32: sampling in bfloat16 keeps float32 master weights
    # and upcast losses, so its rows hold more than half a float32 row's bytes.
    size = max(torch.tensor([], dtype=config.torch_dtype).element_size(), 4)
    return saved[0] * size // torch.tensor([], dtype=dtype).element_size()


def checkpoints_per_call(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    config: LLCConfig,
    rows_per_checkpoint: int,
    limit: int,
) -> int:
    """``limit`` checkpoints per vmap call, fewer on a CPU where their activations would pass
    ``CPU_ACTIVATION_BYTES`` (never fewer than one). ``rows_per_checkpoint``: the rows of a
    checkpoint that run forward and backward together (its chains, or its largest pass)."""
    if limit <= 1 or config.device.startswith("cuda"):  # nothing to cap: no probe
        return limit
    per_ckpt = rows_per_checkpoint * activation_bytes(model, loss_fn, batch, config)
    return max(1, min(limit, CPU_ACTIVATION_BYTES // max(per_ckpt, 1)))


def chunk_checkpoints(state_dicts: Sequence[Any], per_chunk: int) -> list[Sequence[Any]]:
    """Checkpoints in chunks of ``per_chunk`` (with several, make the batches
    ``replayable`` so every chunk replays the same minibatches)."""
    return [state_dicts[i : i + per_chunk] for i in range(0, len(state_dicts), per_chunk)]


def replayable(batches: Iterable[Any], config: LLCConfig) -> Iterable[Any]:
    """``batches``, or a one-shot iterator of them as a list of what one sampler run
    draws (one minibatch per chain and step), so a second run replays the same ones."""
    if not isinstance(batches, Sequence) and iter(batches) is batches:
        return list(itertools.islice(batches, config.total_steps * config.num_chains))
    return batches


def _chunk_progress(progress: Progress | None, ci: int, n_chunks: int) -> Progress:
    """Chunk ``ci``'s progress reported as part of the whole run."""

    def report(done: int, total: int, msg: str) -> None:
        if progress is not None:
            progress(ci * total + done, n_chunks * total, f"{msg} (chunk {ci + 1}/{n_chunks})")

    return report
