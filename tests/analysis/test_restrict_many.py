"""Restricted LLCs of several checkpoints in one vectorised run (checkpoint x group x chain)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from phaseboard.analysis.llc import LLCConfig, estimate_llc
from phaseboard.analysis.restrict import (
    estimate_llc_data_restricted_many,
    estimate_llc_restricted,
    estimate_llc_restricted_many,
    rows_for_budget,
)


class Net(nn.Module):
    def __init__(self, seed: int, d_in: int = 3, d_hidden: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(d_in, d_hidden)
        self.b = nn.Linear(d_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 3, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]


CONFIG = LLCConfig(num_chains=3, num_draws=20, num_burnin_steps=5, lr=1e-3, num_samples=128)
MASKS = {"a": {"a.weight": None, "a.bias": None}, "b": {"b.weight": None, "b.bias": None}}


@pytest.mark.parametrize("max_rows", [None, 8])  # 8 rows: one checkpoint (2x3 + 1) per chunk
def test_batched_restricted_llc_equals_each_checkpoint_alone(max_rows: int | None) -> None:
    models = [Net(seed) for seed in range(3)]
    alone = [estimate_llc_restricted(m, _mse, _batches(), CONFIG, MASKS) for m in models]
    many = estimate_llc_restricted_many(models, _mse, _batches(), CONFIG, MASKS, max_rows=max_rows)
    assert len(many) == 3
    for one, batched in zip(alone, many, strict=True):
        assert list(batched) == ["a", "b"]
        for group in MASKS:
            # Same seed, batches and noise: equal up to float32 reduction order (tolerance
            # 1e-4 relative on the LLC, 1e-6 on the init loss).
            assert math.isclose(batched[group].mean, one[group].mean, rel_tol=1e-4, abs_tol=1e-4)
            assert math.isclose(batched[group].init_loss, one[group].init_loss, rel_tol=1e-6)
            assert batched[group].num_params_free == one[group].num_params_free


@pytest.mark.parametrize("one_shot", [False, True])
@pytest.mark.parametrize("max_rows", [None, 8])  # 8 rows: one checkpoint (2 x (3 + 1)) per chunk
def test_data_subsets_in_one_run_equal_an_estimate_on_each_subset_alone(
    max_rows: int | None, one_shot: bool
) -> None:
    models = [Net(seed) for seed in range(3)]
    data = _batches()
    subsets = {"low": data[:2], "high": data[2:]}
    alone = [{n: estimate_llc(m, _mse, b, CONFIG) for n, b in subsets.items()} for m in models]
    given = {n: iter(b) if one_shot else b for n, b in subsets.items()}
    many = estimate_llc_data_restricted_many(models, _mse, given, CONFIG, max_rows=max_rows)
    assert len(many) == 3
    for one, batched in zip(alone, many, strict=True):
        assert list(batched) == ["low", "high"]
        for name in subsets:
            # Each subset's rows draw its own minibatches and the same noise as a run of
            # their own: equal up to float32 reduction order (as above).
            assert batched[name].per_chain == pytest.approx(one[name].per_chain, rel=1e-4, abs=1e-4)
            assert math.isclose(batched[name].init_loss, one[name].init_loss, rel_tol=1e-6)
        assert batched["low"].init_loss != batched["high"].init_loss  # the data differ


def test_batched_restricted_llc_takes_state_dicts_with_a_template() -> None:
    models = [Net(seed) for seed in range(2)]
    sds = [m.state_dict() for m in models]
    many = estimate_llc_restricted_many(sds, _mse, _batches(), CONFIG, MASKS, model=Net(9))
    alone = estimate_llc_restricted(models[1], _mse, _batches(), CONFIG, MASKS)
    assert math.isclose(many[1]["b"].mean, alone["b"].mean, rel_tol=1e-4, abs_tol=1e-4)
    with pytest.raises(ValueError, match="template"):
        estimate_llc_restricted_many(sds, _mse, _batches(), CONFIG, MASKS)


class Scaled(Net):
    """A non-persistent buffer (as rotary tables and causal masks are): never in a state_dict."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def test_state_dicts_take_their_non_persistent_buffers_from_the_template() -> None:
    models = [Scaled(seed) for seed in range(2)]
    sds = [m.state_dict() for m in models]
    assert "scale" not in sds[0]
    many = estimate_llc_restricted_many(sds, _mse, _batches(), CONFIG, MASKS, model=Scaled(9))
    alone = estimate_llc_restricted(models[1], _mse, _batches(), CONFIG, MASKS)
    assert math.isclose(many[1]["b"].mean, alone["b"].mean, rel_tol=1e-4, abs_tol=1e-4)


def test_memory_budget_gives_more_rows_for_more_memory_and_at_least_one() -> None:
    model = Net(0)
    small, large = rows_for_budget(model, CONFIG, 10_000), rows_for_budget(model, CONFIG, 10**9)
    assert 1 <= small < large
    assert rows_for_budget(model, CONFIG, 1) == 1


def HeavyFirst(seed: int) -> Net:  # noqa: N802 - reads as the model it builds
    """A wide first layer and a one-unit readout: restricting to the readout should cost
    little more than the frozen forward."""
    return Net(seed, d_in=32, d_hidden=32)


def _wide_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 32, generator=g)
    return [(x[i : i + 16], x[i : i + 16].sum(dim=1, keepdim=True)) for i in range(0, 64, 16)]


def _flops(masks: dict, models: list[nn.Module], config: LLCConfig) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        estimate_llc_restricted_many(models, _mse, _wide_batches(), config, masks)
    return counter.get_total_flops()


def test_no_row_pays_for_tensors_its_group_leaves_frozen() -> None:
    """Groups {a, b} together cost what a alone and b alone cost, less the reference forward
    they share: a row of group b neither differentiates nor copies layer a. (Counted FLOPs,
    so exact up to 1 %; putting both groups' tensors in every row would cost ~25 % more.)
    Each run also makes one forward on one minibatch to size its activations
    (``checkpoints_per_call``), so the two runs alone make one more of those."""
    from torch.utils.flop_counter import FlopCounterMode

    models = [HeavyFirst(seed) for seed in range(2)]
    config = LLCConfig(num_chains=2, num_draws=3, lr=1e-4, num_samples=64)
    a = {"a": {"a.weight": None, "a.bias": None}}
    b = {"b": {"b.weight": None, "b.bias": None}}
    with FlopCounterMode(display=False) as counter:
        _mse(models[0], _wide_batches()[0])
    forward = counter.get_total_flops()
    reference = len(models) * config.num_chains * config.num_draws * forward
    both, alone = (
        _flops({**a, **b}, models, config),
        _flops(a, models, config) + _flops(b, models, config),
    )
    shared = reference + forward  # the reference rows and the activation probe
    assert math.isclose(both, alone - shared, rel_tol=0.01), (both, alone, shared)
    assert _flops(b, models, config) < 0.7 * _flops(a, models, config)


def test_chunks_count_only_the_tensors_a_group_frees() -> None:
    from phaseboard.analysis.llc import row_equivalents

    model = HeavyFirst(0)
    a = {"a.weight": None, "a.bias": None}
    b = {"b.weight": None, "b.bias": None}
    assert row_equivalents(model, [b], 4) < 3 < row_equivalents(model, [a], 4)
    # Groups freeing the same tensors share a pass: its rows are groups x chains.
    assert row_equivalents(model, [a, a], 4) > row_equivalents(model, [a, b], 4)
    assert row_equivalents(model, [None], 4) == 4 + 2
