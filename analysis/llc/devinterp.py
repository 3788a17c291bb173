"""devinterp 2.0.1 compatibility: its way of measuring L(w*)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .config import LossFn
from .sampler import _BatchCycler


def devinterp_init_loss(
    loss_fn: LossFn, model: nn.Module, batches: Iterable[Any], num_batches: int = 32
) -> float:
    """L(w*) the way devinterp 2.0.1's ``sample()`` measures it: the mean loss of the model
    over the first ``num_batches`` (its ``num_init_loss_batches``, default 32) minibatches of
    the sampling stream (by default every chain's loader is seeded alike, so one stream),
    once, unpaired with the draws. ``LLCResult.rebased(devinterp_init_loss(...))`` puts our
    draws on devinterp's footing (docs/trusting-the-llc.md, "Comparing with devinterp")."""
    losses = []
    with torch.no_grad():
        for batch in itertools.islice(_BatchCycler(batches), num_batches):
            losses.append(float(loss_fn(model, batch)))
    return sum(losses) / len(losses)
