"""A minimal sequential SGLD loop: the baseline a sampler's step has to beat.

One chain after another on a copy of the model, plain autograd, no framework: what a
researcher writes in twenty lines. Same update as Phaseboard's sampler,

    w <- w - (eps/2) (n_beta grad L_m(w) + gamma (w - w*)) + sqrt(eps) N(0, 1),

each chain drawing its own minibatches from its own stream. Its LLC takes L(w*) on the
whole training set (computed once per call: no paired reference forward per draw).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class SequentialRun:
    trace: Tensor  # (C, D) minibatch loss of each chain at each draw (before its update)
    init_loss: float | None  # L(w*) over the training set, if asked for
    seconds: float


def sequential_sgld(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Callable[[int], Iterator[Any]],
    *,
    lr: float,
    n_beta: float,
    localization: float,
    chains: int,
    draws: int,
    seed: int = 0,
    burnin: int = 0,
    full_loss: Callable[[], float] | None = None,
) -> SequentialRun:
    """``chains`` SGLD chains of ``burnin`` + ``draws`` steps, one after another (the loss
    of the last ``draws`` recorded); chain c draws its minibatches from
    ``batches(seed * 1000 + c)`` and its noise from its own generator."""
    t0 = time.perf_counter()
    init_loss = full_loss() if full_loss is not None else None
    work = copy.deepcopy(model)
    params = [p for p in work.parameters() if p.requires_grad]
    w_star = [p.detach().clone() for p in params]
    trace = torch.empty(chains, draws)
    drift, pull, noise_scale = -lr / 2 * n_beta, -lr / 2 * localization, math.sqrt(lr)
    for c in range(chains):
        gen = torch.Generator(device=w_star[0].device).manual_seed(seed * 1000 + c)
        stream = batches(seed * 1000 + c)
        with torch.no_grad():
            for p, p0 in zip(params, w_star, strict=True):
                p.copy_(p0)
        for t in range(-burnin, draws):
            loss = loss_fn(work, next(stream))
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, p0 in zip(params, grads, w_star, strict=True):
                    noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
                    p.add_(p - p0, alpha=pull).add_(g, alpha=drift).add_(noise, alpha=noise_scale)
            if t >= 0:
                trace[c, t] = loss.detach()
    return SequentialRun(trace, init_loss, time.perf_counter() - t0)
