"""Unit tests for analysis.llc: shapes, determinism, masking, divergence, batching."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from phaseboard.analysis.llc import (
    LLCConfig,
    LLCResult,
    calibrate,
    estimate_llc,
    estimate_llc_many,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def _data(n: int = 128, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _trained(seed: int = 0, steps: int = 300) -> nn.Module:
    model = _model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    data = _data()
    for i in range(steps):
        opt.zero_grad()
        _mse(model, data[i % len(data)]).backward()
        opt.step()
    return model


CFG = dict(lr=1e-4, num_samples=128, localization=100.0, num_chains=3, num_draws=20)


def test_result_has_the_documented_shapes_and_is_json_able() -> None:
    model = _trained()
    res = estimate_llc(model, _mse, _data(), LLCConfig(**CFG))
    assert isinstance(res, LLCResult)
    assert len(res.per_chain) == 3
    assert len(res.loss_trace) == 3 and all(len(t) == 20 for t in res.loss_trace)
    assert res.diverged == []
    assert res.num_params_free == sum(p.numel() for p in model.parameters())
    assert res.n_beta == pytest.approx(128 / math.log(128))
    assert math.isfinite(res.mean) and res.std >= 0
    json.dumps(res.to_dict(), allow_nan=False)
    assert res.config == LLCConfig(**CFG).to_dict()


def test_same_seed_gives_identical_chains_and_another_seed_does_not() -> None:
    model = _trained()
    a = estimate_llc(model, _mse, _data(), LLCConfig(**CFG))
    b = estimate_llc(model, _mse, iter(_data()), LLCConfig(**CFG))  # iterator: replayed
    c = estimate_llc(model, _mse, _data(), LLCConfig(**{**CFG, "seed": 1}))
    assert a.per_chain == b.per_chain
    assert a.per_chain != c.per_chain


def test_sampling_leaves_the_model_untouched() -> None:
    model = _trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_llc(model, _mse, _data(), LLCConfig(**CFG))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_frozen_parameters_never_move() -> None:
    """Only rows 0-3 of layer 0's weight are free: a loss of the other entries is constant."""
    model = _trained()
    w = model[0].weight
    entry = torch.zeros_like(w, dtype=torch.bool)
    entry[:4] = True
    res = estimate_llc(model, _mse, _data(), LLCConfig(**CFG), param_mask={"0.weight": entry})
    assert res.num_params_free == int(entry.sum())

    # Direct check on the sampler's final parameters: a loss that returns a function of
    # the frozen tensors only must stay exactly at its w* value.
    def frozen_only(m: nn.Module, batch: object) -> torch.Tensor:
        return (m[0].weight[4:] ** 2).sum() + (m[2].weight ** 2).sum() + (m[0].bias ** 2).sum()

    res = estimate_llc(
        model, frozen_only, _data(), LLCConfig(**CFG), param_mask={"0.weight": entry}
    )
    flat = [x for row in res.loss_trace for x in row]
    assert max(flat) == min(flat) == pytest.approx(res.init_loss)
    assert all(x == 0.0 for x in res.per_chain)


def test_param_mask_with_unknown_name_or_bad_shape_is_rejected() -> None:
    model = _trained()
    with pytest.raises(ValueError, match="unknown parameter"):
        estimate_llc(model, _mse, _data(), LLCConfig(**CFG), param_mask={"nope": None})
    with pytest.raises(ValueError, match="bool tensor of shape"):
        estimate_llc(model, _mse, _data(), LLCConfig(**CFG), param_mask={"0.weight": torch.ones(2)})
    with pytest.raises(ValueError, match="no parameter free"):
        estimate_llc(model, _mse, _data(), LLCConfig(**CFG), param_mask={})


def test_huge_lr_chains_are_flagged_diverged_and_excluded() -> None:
    model = _trained()
    res = estimate_llc(model, _mse, _data(), LLCConfig(**{**CFG, "lr": 10.0}))
    assert res.diverged == [0, 1, 2]
    assert math.isnan(res.mean)
    d = res.to_dict()
    assert d["mean"] is None
    json.dumps(d, allow_nan=False)


def test_diverged_chain_is_excluded_from_mean_not_averaged_in() -> None:
    """Calibrate runs settings side by side: a diverging setting does not leak."""
    model = _trained()
    rep = calibrate(
        model, _mse, _data(), LLCConfig(**CFG), lrs=(1e-4, 10.0), localizations=(100.0,)
    )
    good, bad = rep.entries
    assert good.diverged == [] and bad.diverged == [0, 1, 2]
    assert math.isfinite(good.mean) and not bad.stable
    alone = estimate_llc(model, _mse, _data(), LLCConfig(**CFG))
    assert good.mean == pytest.approx(alone.mean, rel=1e-4)


def test_many_checkpoints_agree_with_one_at_a_time() -> None:
    models = [_trained(seed) for seed in range(3)]
    cfg = LLCConfig(**CFG)
    many = estimate_llc_many(models, _mse, _data(), cfg)
    chunked = estimate_llc_many(
        [m.state_dict() for m in models], _mse, _data(), cfg, model=_model(), max_batch=4
    )
    for m, r, rc in zip(models, many, chunked, strict=True):
        one = estimate_llc(m, _mse, _data(), cfg)
        assert r.per_chain == pytest.approx(one.per_chain, rel=1e-3, abs=1e-3)
        assert rc.per_chain == pytest.approx(one.per_chain, rel=1e-3, abs=1e-3)
        assert r.init_loss == pytest.approx(one.init_loss, rel=1e-5)


def test_progress_is_reported_up_to_the_total() -> None:
    calls: list[tuple[int, int, str]] = []
    cfg = LLCConfig(**{**CFG, "num_burnin_steps": 5})
    estimate_llc(_trained(), _mse, _data(), cfg, progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[-1] == (25, 25, "chain draws 20/20")
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_calibrate_recommends_a_stable_flat_setting() -> None:
    model = _trained()
    cfg = LLCConfig(**{**CFG, "num_draws": 40})
    rep = calibrate(model, _mse, _data(), cfg, lrs=(1e-5, 1e-4, 50.0), localizations=(100.0,))
    assert rep.recommended is not None
    assert rep.recommended.stable and rep.recommended.flat
    assert rep.recommended.lr < 50.0
    assert "lr" in rep.summary() and "*" in rep.summary()
    json.dumps(rep.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": 0.0}, "lr must be"),
        ({"num_chains": 0}, "num_chains"),
        ({"num_draws": 1.5}, "num_draws"),
        ({"num_burnin_steps": -1}, "num_burnin_steps"),
        ({"dtype": "float16x"}, "dtype"),
        ({"n_beta": -3.0}, "n_beta"),
        ({"localization": -1.0}, "localization"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_config_validation_names_the_bad_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLCConfig(**{**CFG, **overrides})


def test_config_needs_n_beta_or_num_samples() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        LLCConfig(lr=1e-3)
    assert LLCConfig(n_beta=10.0).effective_n_beta == 10.0


def test_config_round_trips_through_json_and_rejects_unknown_keys() -> None:
    cfg = LLCConfig(**CFG)
    assert LLCConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown LLCConfig fields"):
        LLCConfig.from_dict({**cfg.to_dict(), "temperature": 1.0})


def test_reference_every_k_draws_keeps_the_chains_and_takes_every_kth_reference() -> None:
    """With the reference forward at every 4th draw the chains are the same (the reference
    never feeds the update) and the reference losses are the every-draw run's at draws
    0, 4, 8, ...: a chain's init loss is their mean."""
    from phaseboard.analysis.llc.sampler import _run_sgld

    model, cfg = _trained(), LLCConfig(**{**CFG, "num_draws": 10})
    sd = dict(model.named_parameters())

    def run(**kwargs: int):  # type: ignore[no-untyped-def]
        return _run_sgld(
            model, _mse, _data(), cfg, [sd], [None], [cfg.lr], [cfg.localization], None, **kwargs
        )

    every, sparse = run(), run(reference_every=4)
    assert torch.equal(sparse.traces, every.traces)
    assert sparse.ref.shape[-1] == 3  # draws 0, 4, 8
    assert torch.equal(sparse.ref, every.ref[..., ::4])
    with pytest.raises(ValueError, match="reference_every"):
        run(reference_every=0)
