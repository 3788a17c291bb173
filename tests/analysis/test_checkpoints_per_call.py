"""How many checkpoints share one vmap call on a CPU: capped by their activations.

A model whose rows save tens of MB for the backward is compute-bound at one checkpoint, and
more per call only add page faults (attention_lm: 2x slower per checkpoint at 16 than at 1,
bench/RESULTS.md); small models gain from every checkpoint added. The cap decides chunks,
never numbers: each checkpoint's estimate is the same in any chunk.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import phaseboard.analysis.llc as llc
import phaseboard.analysis.llc.budgets as budgets
from phaseboard.analysis.llc import (
    LLCConfig,
    activation_bytes,
    checkpoints_per_call,
    estimate_llc_many,
    first_batch,
)
from phaseboard.analysis.restrict import estimate_llc_restricted_many

CONFIG = LLCConfig(num_chains=2, num_draws=8, num_burnin_steps=2, lr=1e-3, num_samples=256)


class Net(nn.Module):
    def __init__(self, seed: int, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(3, width)
        self.b = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _batches(n: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4 * n, 3, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return [(x[i : i + n], y[i : i + n]) for i in range(0, 4 * n, n)]


def test_activations_grow_with_the_minibatch_and_the_sampling_dtype() -> None:
    model = Net(0)
    small = activation_bytes(model, _mse, _batches(32)[0], CONFIG)
    # Every saved activation is (batch, ...): twice the rows, twice the bytes.
    assert activation_bytes(model, _mse, _batches(64)[0], CONFIG) == 2 * small
    f64 = LLCConfig(**{**CONFIG.to_dict(), "dtype": "float64"})
    assert activation_bytes(model, _mse, _batches(32)[0], f64) == 2 * small
    # bfloat16 rows keep float32 master weights and upcast losses: counted as float32.
    bf16 = LLCConfig(**{**CONFIG.to_dict(), "dtype": "bfloat16"})
    assert activation_bytes(model, _mse, _batches(32)[0], bf16) == small
    # At least the hidden layer's input and output, 32 x 8 floats each (parameters are not
    # activations: the 8 x 3 weight is never counted).
    assert small >= 2 * 32 * 8 * 4


def test_large_activations_get_one_checkpoint_per_call_small_ones_the_limit() -> None:
    wide, batch = Net(0, width=4096), _batches(512)[0]
    per_row = activation_bytes(wide, _mse, batch, CONFIG)
    rows = llc.CPU_ACTIVATION_BYTES // per_row + 1  # one checkpoint already past the cap
    assert checkpoints_per_call(wide, _mse, batch, CONFIG, rows, limit=16) == 1
    assert checkpoints_per_call(Net(0), _mse, _batches()[0], CONFIG, 2, limit=16) == 16
    gpu = LLCConfig(**{**CONFIG.to_dict(), "device": "cuda"})
    assert checkpoints_per_call(wide, _mse, batch, gpu, rows, limit=16) == 16  # no cap there


def test_first_batch_keeps_a_one_shot_iterator_whole() -> None:
    data = _batches()
    first, rest = first_batch(iter(data))
    assert first is data[0] and list(rest) == data
    first, same = first_batch(data)
    assert first is data[0] and same is data
    with pytest.raises(ValueError, match="batches is empty"):
        first_batch(iter([]))


@pytest.mark.parametrize("kind", ["plain", "restricted"])
def test_capped_calls_give_each_checkpoint_the_same_estimate(kind: str, monkeypatch) -> None:
    models = [Net(seed) for seed in range(3)]
    masks = {"a": {"a.weight": None, "a.bias": None}, "b": {"b.weight": None}}

    def run() -> tuple[list[float], set[str]]:
        chunks: set[str] = set()

        def progress(done: int, total: int, msg: str) -> None:
            chunks.add(msg.rpartition("(chunk ")[2])

        if kind == "plain":
            out = estimate_llc_many(models, _mse, iter(_batches()), CONFIG, progress=progress)
            return [r.mean for r in out], chunks
        many = estimate_llc_restricted_many(
            models, _mse, iter(_batches()), CONFIG, masks, progress=progress
        )
        return [r[g].mean for r in many for g in masks], chunks

    together, chunks = run()
    assert chunks == {"1/1)"}
    monkeypatch.setattr(budgets, "CPU_ACTIVATION_BYTES", 1)  # every checkpoint past the cap
    apart, chunks = run()
    assert chunks == {"1/3)", "2/3)", "3/3)"}
    for a, b in zip(together, apart, strict=True):  # float32 reduction order: 1e-4
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)
