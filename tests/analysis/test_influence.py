"""The influence lenses' numerics: the sampler's draw-step hook, BIF and susceptibility
bookkeeping, batching across checkpoints, token-level shapes, clustering and sign flips.
(Agreement with theory is in tests/science/test_influence_theory.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from phaseboard.analysis.influence import (
    bayesian_influence,
    bayesian_influence_many,
    cluster_vectors,
    influence_matrix,
    sign_change_boundaries,
    susceptibilities,
    susceptibilities_many,
)
from phaseboard.analysis.llc import LLCConfig
from phaseboard.analysis.llc.sampler import _run_sgld
from phaseboard.analysis.tasks import get_task


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))[:, 0]


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 3, generator=g)
    return x, torch.sin(x.sum(1)) + 0.1 * torch.randn(24, generator=g)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * (model(batch[0]) - batch[1]).square().mean()


def _per_example(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * (model(batch[0]) - batch[1]).square()


def _config(**kw: object) -> LLCConfig:
    base = {"lr": 1e-3, "n_beta": 20.0, "num_chains": 3, "num_draws": 30, "localization": 50.0}
    return LLCConfig(**{**base, **kw})  # type: ignore[arg-type]


def _nets(k: int) -> list[Net]:
    nets = []
    for i in range(k):
        torch.manual_seed(i)
        nets.append(Net())
    return nets


def test_observables_at_draw_steps_are_taken_at_the_weights_of_the_draw_step_loss() -> None:
    # An observable equal to the full-batch loss must reproduce the trace of draw-step
    # losses exactly, for every checkpoint, weight group (pass) and chain.
    data = _data()
    nets = _nets(2)
    sds = [{**dict(n.named_parameters()), **dict(n.named_buffers())} for n in nets]
    masks = [None, {"second.weight": None}, {"first.weight": None, "first.bias": None}]
    cfg = _config(num_burnin_steps=3, num_steps_bw_draws=2)
    out = _run_sgld(
        nets[0], _loss, [data], cfg, sds, masks, [cfg.lr] * 3, [cfg.localization] * 3, None,
        observables=[lambda m: _loss(m, data), lambda m: _per_example(m, data)],
    )  # fmt: skip
    assert out.observed[0].shape == (2, 3, 3, 30)
    assert out.observed[1].shape == (2, 3, 3, 30, 24)
    torch.testing.assert_close(out.observed[0], out.traces, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.observed[1].mean(-1), out.traces, rtol=1e-5, atol=1e-6)


def test_bif_is_a_correlation_matrix_and_covariance_has_the_variances_on_its_diagonal() -> None:
    data = _data()
    probe = (data[0][:6], data[1][:6])
    net = _nets(1)[0]
    cfg = _config(num_draws=60)
    corr = bayesian_influence(net, _loss, [data], probe, cfg, per_example_loss=_per_example)
    cov = bayesian_influence(
        net, _loss, [data], probe, cfg, per_example_loss=_per_example, covariance=True
    )
    assert corr.matrix.shape == (6, 6)
    torch.testing.assert_close(corr.matrix, corr.matrix.T)
    torch.testing.assert_close(corr.matrix.diag(), torch.ones(6, dtype=torch.float64))
    assert (corr.matrix.abs() <= 1 + 1e-9).all()
    stacked = cov.draws.reshape(-1, 6).double()
    torch.testing.assert_close(cov.matrix.diag(), stacked.var(dim=0))
    assert cov.llc.num_params_free == sum(p.numel() for p in net.parameters())
    assert cov.init.shape == (6,)
    torch.testing.assert_close(cov.init, _per_example(net, probe).detach().double())
    # a block is the same numbers as the full matrix
    torch.testing.assert_close(corr.block(rows=[0, 1], cols=slice(2, 6)), corr.matrix[:2, 2:])
    assert corr.chain_matrices().shape == (3, 6, 6)


def test_examples_the_free_weights_cannot_move_have_no_correlation() -> None:
    # Only the bias of the last layer moves: every example's loss moves with it, but an
    # observable that ignores it (a constant) has zero variance -> NaN correlation.
    data = _data()
    net = _nets(1)[0]
    cfg = _config()

    def per_example(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss = _per_example(model, batch)
        return torch.cat([loss, model.first.bias[:1] * 0 + 1.0])

    res = bayesian_influence(
        net, _loss, [data], (data[0][:4], data[1][:4]), cfg,
        per_example_loss=per_example, param_mask={"second.bias": None},
    )  # fmt: skip
    assert res.llc.num_params_free == 1
    assert torch.isnan(res.matrix[4]).all() and torch.isnan(res.matrix[:, 4]).all()
    assert torch.isfinite(res.matrix[:4, :4]).all()
    # one free coordinate: every loss is a function of it, so |correlation| is high
    assert res.matrix[:4, :4].abs().min() > 0.5


def test_many_checkpoints_in_one_run_equal_each_checkpoint_alone() -> None:
    data = _data()
    probe = (data[0][:5], data[1][:5])
    nets = _nets(3)
    cfg = _config()
    many = bayesian_influence_many(nets, _loss, [data], probe, cfg, per_example_loss=_per_example)
    # max_rows forces one checkpoint per chunk: the chunks replay the same minibatches
    chunked = bayesian_influence_many(
        nets, _loss, [data], probe, cfg, per_example_loss=_per_example, max_rows=1
    )
    for k, net in enumerate(nets):
        alone = bayesian_influence(net, _loss, [data], probe, cfg, per_example_loss=_per_example)
        torch.testing.assert_close(many[k].matrix, alone.matrix, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(chunked[k].matrix, alone.matrix, rtol=1e-4, atol=1e-5)
        assert many[k].llc.mean == pytest.approx(alone.llc.mean, rel=1e-4, abs=1e-6)


def test_influence_matrix_blocks_and_token_level_average() -> None:
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(50, 4, 3, generator=g)
    draws[:, :, 2] = torch.nan  # a position without a target
    seq = draws[:, :, :2].mean(-1)
    torch.testing.assert_close(influence_matrix(draws), influence_matrix(seq).double())
    cov = influence_matrix(seq, covariance=True, rows=[1], cols=[0, 3])
    expected = torch.cov(seq.double().T)[[1]][:, [0, 3]]
    torch.testing.assert_close(cov, expected)
    with pytest.raises(ValueError, match="two draws"):
        influence_matrix(draws[:1])


def _attention_lm():  # type: ignore[no-untyped-def]
    task = get_task(
        "attention_lm",
        {"vocab": 12, "seq_len": 8, "span_min": 2, "span_max": 4, "d_model": 8, "n_layers": 1,
         "n_heads": 2,
         "num_samples": 64, "num_test": 16},
    )  # fmt: skip
    torch.manual_seed(0)
    return task, task.build_model()


def test_token_task_gives_per_token_influence_and_susceptibilities() -> None:
    task, model = _attention_lm()
    train = task.datasets()["train"]
    probe = train[:4]
    cfg = _config(num_draws=12, num_chains=2, lr=1e-4, n_beta=30.0)
    batches = task.batches("train", 16, seed=0)
    res = bayesian_influence(
        model, task.loss, batches, probe, cfg,
        per_example_loss=task.per_token_loss, token_level=True,
    )  # fmt: skip
    T = probe[0].shape[1]
    assert res.draws.shape == (2, 12, 4, T)
    assert res.matrix.shape == (4, 4) and torch.isfinite(res.matrix).all()
    assert res.token_matrix is not None and res.token_matrix.shape == (4, 4, T, T)
    no_target = probe[1] < 0
    assert torch.isnan(res.init[no_target]).all() and torch.isfinite(res.init[~no_target]).all()

    groups = {k: v for k, v in task.weight_groups(model).items() if k.startswith("l0.")}
    subsets = {name: task.datasets()[name][:4] for name in task.data_subsets()}
    sus = susceptibilities(
        model, task.loss, task.batches("train", 16, seed=0), cfg,
        weight_groups=groups, observables=subsets, reference=train[:8],
        per_example_loss=task.per_token_loss,
    )  # fmt: skip
    assert sus.token_level
    assert sus.groups == list(groups) and sus.probes == list(subsets)
    assert sus.matrix.shape == (len(groups), len(subsets))
    assert torch.isfinite(sus.matrix).all() and torch.isfinite(sus.matrix_se).all()
    for name, chi in sus.per_example.items():
        assert chi.shape == (len(groups), 4, T)
        targets = subsets[name][1]
        assert torch.isnan(chi[:, targets < 0]).all()
        assert torch.isfinite(chi[:, targets >= 0]).all()
        assert sus.per_sequence(name).shape == (len(groups), 4)
    assert set(sus.llc) == set(groups) and sus.full_llc.num_params_free > 0


def test_susceptibilities_of_several_checkpoints_equal_each_alone() -> None:
    data = _data()
    nets = _nets(2)
    cfg = _config()
    kwargs = {
        "weight_groups": {"first": {"first.weight": None}, "second": {"second.weight": None}},
        "observables": {"low": (data[0][:6], data[1][:6]), "high": (data[0][6:12], data[1][6:12])},
        "reference": data,
        "per_example_loss": _per_example,
    }
    many = susceptibilities_many(nets, _loss, [data], cfg, **kwargs)  # type: ignore[arg-type]
    for k, net in enumerate(nets):
        alone = susceptibilities(net, _loss, [data], cfg, **kwargs)  # type: ignore[arg-type]
        assert not many[k].token_level and many[k].per_example["low"].shape == (2, 6)
        torch.testing.assert_close(many[k].matrix, alone.matrix, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(many[k].matrix_se, alone.matrix_se, rtol=1e-3, atol=1e-8)


def test_susceptibilities_refuse_an_empty_group_or_observable_list() -> None:
    data = _data()
    net = _nets(1)[0]
    with pytest.raises(ValueError, match="weight_groups"):
        susceptibilities(
            net, _loss, [data], _config(), weight_groups={}, observables={"a": data},
            reference=data, per_example_loss=_per_example,
        )  # fmt: skip
    with pytest.raises(ValueError, match="observables"):
        susceptibilities(
            net, _loss, [data], _config(), weight_groups={"w": {"second.bias": None}},
            observables={}, reference=data, per_example_loss=_per_example,
        )  # fmt: skip


def test_sign_change_boundary_is_placed_where_significant_values_flip() -> None:
    steps = [0, 10, 100, 1000, 10000]
    values = np.array(
        [
            [1.0, 1.0, 1.0, -1.0, -1.0],  # flips between 100 and 1000
            [-2.0, -2.0, -2.0, 2.0, 2.0],  # the same interval
            [0.5, 0.5, 0.5, 0.5, 0.5],  # never
            [0.01, -0.01, 0.01, -0.01, 0.01],  # flips only within its noise
        ]
    )
    se = np.full_like(values, 0.1)
    found = sign_change_boundaries(steps, values, se, source="susceptibilities", names="abcd")
    assert len(found) == 1
    b = found[0]
    assert 100 < b.step < 1000 and b.kind == "sign_change" and b.source == "susceptibilities"
    assert b.score == pytest.approx(15.0)  # mean evidence: min |z| is 10 for a, 20 for b
    assert b.label.startswith("2/3 flip sign") and "b" in b.label and "a" in b.label
    assert sign_change_boundaries(steps, values[2:], se[2:], source="x") == []


def test_cluster_vectors_recovers_planted_groups_of_token_vectors() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    labels = np.repeat([0, 1, 2], 40)
    vectors = centers[labels] + 0.05 * rng.standard_normal((120, 3))
    vectors[5] = np.nan  # a token without a target
    found = cluster_vectors(vectors)
    assert found.k == 3 and 5 not in found.kept and len(found.kept) == 119
    kept_labels = labels[found.kept]
    for c in range(3):  # each planted group is one found cluster
        assert len(set(found.labels[kept_labels == c])) == 1
    assert found.coords.shape == (119, 2) and found.silhouette is not None
    assert found.silhouette > 0.8


def test_cluster_vectors_of_identical_or_single_rows_stay_finite() -> None:
    # nothing to project: every row at the origin, no variance shares (no NaN for the JSON)
    import warnings

    for vectors in (np.ones((6, 3)), np.array([[0.5, -1.0, 2.0]])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            found = cluster_vectors(vectors)
        assert found.k == 1 and found.explained_variance == []
        assert np.all(found.coords == 0) and found.silhouette is None


def test_observing_every_third_draw_records_those_draws_of_the_same_chains() -> None:
    # Observing draws does not touch the sampler's randomness: the thinned record is the
    # full record's every third draw, and the LLC (all draws) is unchanged.
    data = _data()
    probe = (data[0][:5], data[1][:5])
    net = _nets(1)[0]
    cfg = _config(num_draws=10)
    full = bayesian_influence(net, _loss, [data], probe, cfg, per_example_loss=_per_example)
    thin = bayesian_influence(
        net, _loss, [data], probe, cfg, per_example_loss=_per_example, observe_every=3
    )
    assert thin.draws.shape == (3, 4, 5)  # draws 0, 3, 6, 9
    torch.testing.assert_close(thin.draws, full.draws[:, ::3])
    assert thin.llc.mean == full.llc.mean
    with pytest.raises(ValueError, match="observe_every"):
        bayesian_influence(
            net, _loss, [data], probe, cfg, per_example_loss=_per_example, observe_every=0
        )


def test_reference_init_shifts_chi_by_its_offset_times_the_posteriors_mean_shift_gap() -> None:
    # chi = E_C[phi (L - l)] - E_C[phi] E_full[L - l] with phi = L - L0: moving L0 by c moves
    # chi by c * (E_C[L - l] - E_full[L - l]); the default L0 is the reference set's own loss.
    data = _data()
    net = _nets(1)[0]
    kwargs = {
        "weight_groups": {"second": {"second.weight": None}},
        "observables": {"low": (data[0][:6], data[1][:6])},
        "reference": data,
        "per_example_loss": _per_example,
    }
    cfg = _config()
    with torch.no_grad():
        exact = float(_per_example(net, data).mean())
    default = susceptibilities(net, _loss, [data], cfg, **kwargs)  # type: ignore[arg-type]
    same = susceptibilities(net, _loss, [data], cfg, reference_init=exact, **kwargs)  # type: ignore[arg-type]
    shifted = susceptibilities(net, _loss, [data], cfg, reference_init=exact + 0.1, **kwargs)  # type: ignore[arg-type]
    assert default.reference_init == pytest.approx(exact, rel=1e-6)
    torch.testing.assert_close(same.matrix, default.matrix, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(shifted.matrix, default.matrix)
