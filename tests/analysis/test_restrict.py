"""Unit tests for analysis.restrict: masks and vectorised restricted estimates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from phaseboard.analysis.llc import LLCConfig, estimate_llc
from phaseboard.analysis.restrict import (
    attention_head_masks,
    estimate_llc_data_restricted,
    estimate_llc_restricted,
    mask_by_pattern,
)


class TwoPart(nn.Module):
    """``used`` enters the loss; ``ignored`` never does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(3, 1)
        self.ignored = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _data(n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[0.5], [-1.0], [2.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _fitted() -> TwoPart:
    model = TwoPart()
    x = torch.cat([b[0] for b in _data()])
    y = torch.cat([b[1] for b in _data()])
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
    with torch.no_grad():
        model.used.weight.copy_(sol[:3].T)
        model.used.bias.copy_(sol[3])
    return model


CFG = LLCConfig(lr=1e-4, num_samples=64, localization=100.0, num_chains=3, num_draws=30)


def test_mask_by_pattern_globs_and_regexes() -> None:
    model = TwoPart()
    assert mask_by_pattern(model, "used.*") == {"used.weight": None, "used.bias": None}
    assert mask_by_pattern(model, r"weight$", regex=True) == {
        "used.weight": None,
        "ignored.weight": None,
    }
    with pytest.raises(ValueError, match="no parameter matches"):
        mask_by_pattern(model, "nothing*")


def test_restricting_to_parameters_the_loss_ignores_gives_zero() -> None:
    model = _fitted()
    res = estimate_llc_restricted(
        model, _mse, _data(), CFG,
        {"ignored": mask_by_pattern(model, "ignored.*"), "used": mask_by_pattern(model, "used.*")},
    )  # fmt: skip
    # Zero up to float32 rounding: the sampled rows and the reference rows batch the same
    # products differently, and some BLAS kernels (MKL's AVX-512 ones) round them differently.
    # Tolerance: n_beta x L(w*) x 1e-6, about 8 float32 ulps of the loss.
    ignored = res["ignored"]
    tol = ignored.n_beta * ignored.init_loss * 1e-6
    assert all(abs(v) <= tol for v in ignored.per_chain), (ignored.per_chain, tol)
    assert res["ignored"].num_params_free == 16
    assert res["used"].mean > 0.01  # 4 regular parameters: clearly positive
    assert res["used"].num_params_free == 4


def test_restricted_groups_match_separate_masked_estimates() -> None:
    """Vectorised groups give the same numbers as one estimate_llc per mask."""
    model = _fitted()
    masks = {"w": {"used.weight": None}, "b": {"used.bias": None}}
    together = estimate_llc_restricted(model, _mse, _data(), CFG, masks)
    for name, mask in masks.items():
        alone = estimate_llc(model, _mse, _data(), CFG, param_mask=mask)
        assert together[name].per_chain == pytest.approx(alone.per_chain, rel=1e-3, abs=1e-4)


def test_data_restricted_runs_one_estimate_per_subset() -> None:
    model = _fitted()
    data = _data()
    res = estimate_llc_data_restricted(model, _mse, {"a": data[:2], "b": data[2:]}, CFG)
    assert set(res) == {"a", "b"}
    assert all(math.isfinite(r.mean) for r in res.values())
    assert res["a"].init_loss != res["b"].init_loss


def test_fused_qkv_head_masks_cover_each_heads_rows_and_out_columns() -> None:
    mha = nn.MultiheadAttention(embed_dim=8, num_heads=2)
    masks = attention_head_masks(
        mha, qkv_param="in_proj_weight", out_param="out_proj.weight", n_heads=2, d_head=4,
        qkv_bias="in_proj_bias",
    )  # fmt: skip
    assert set(masks) == {"out_proj.head0", "out_proj.head1"}
    m0, m1 = masks["out_proj.head0"], masks["out_proj.head1"]
    rows = m0["in_proj_weight"].any(dim=1).nonzero().flatten().tolist()
    assert rows == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]
    assert m0["out_proj.weight"][:, :4].all() and not m0["out_proj.weight"][:, 4:].any()
    # Heads partition the head-owned entries.
    for name in m0:
        assert not (m0[name] & m1[name]).any()
        assert (m0[name] | m1[name]).all()


def test_heads_first_layout_selects_one_head_slice() -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W_Q = nn.Parameter(torch.zeros(3, 8, 2))
            self.W_K = nn.Parameter(torch.zeros(3, 8, 2))
            self.W_V = nn.Parameter(torch.zeros(3, 8, 2))
            self.W_O = nn.Parameter(torch.zeros(3, 2, 8))

    masks = attention_head_masks(
        Attn(), qkv_param=("W_Q", "W_K", "W_V"), out_param="W_O", n_heads=3, d_head=2,
        heads_first=True, prefix="L0.",
    )  # fmt: skip
    m = masks["L0.head1"]
    assert m["W_O"][1].all() and not m["W_O"][0].any() and not m["W_O"][2].any()
    assert int(m["W_Q"].sum()) == 16


def test_head_masks_reject_wrong_shapes() -> None:
    mha = nn.MultiheadAttention(embed_dim=8, num_heads=2)
    with pytest.raises(ValueError, match="expected dim 0"):
        attention_head_masks(
            mha, qkv_param="in_proj_weight", out_param="out_proj.weight", n_heads=4, d_head=4
        )
