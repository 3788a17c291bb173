"""Progress measures on models whose answer is known by construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from phaseboard.analysis.progress import (
    fourier_norms,
    gini,
    icl_score,
    key_frequencies,
    next_token_targets,
    prefix_matching_from_pattern,
    prefix_matching_scores,
    repeated_random_tokens,
    restricted_excluded_loss,
    tms_measures,
)
from phaseboard.analysis.tasks import get_task

P = 13


def test_gini_is_zero_for_equal_values_and_near_one_for_one_spike() -> None:
    assert gini(torch.ones(10)) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0] * 99 + [1.0])) == pytest.approx(0.99)


def test_fourier_norms_find_the_frequencies_an_embedding_is_built_from() -> None:
    a = torch.arange(P).double()
    embed = torch.stack([torch.cos(2 * math.pi * 3 * a / P), torch.sin(2 * math.pi * 5 * a / P)], 1)
    norms = fourier_norms(embed)
    assert norms.shape == (P // 2,)
    assert key_frequencies(embed, n_key=2) == [3, 5]
    assert float(norms[[0, 1, 3, 5]].max()) < 1e-9


class FourierModel(nn.Module):
    """Logits = 8 cos(2 pi k (a + b - c) / p): the grokked circuit at one frequency."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = (tokens[:, 0] + tokens[:, 1]).double()[:, None]
        c = torch.arange(P).double()[None, :]
        return 8 * torch.cos(2 * math.pi * self.k * (s - c) / P)


def test_restricted_loss_keeps_and_excluded_loss_removes_the_key_frequency() -> None:
    a, b = torch.cartesian_prod(torch.arange(P), torch.arange(P)).T
    tokens = torch.stack([a, b, torch.full_like(a, P)], 1)[:80]
    labels = (tokens[:, 0] + tokens[:, 1]) % P
    full = nn.functional.cross_entropy(FourierModel(2)(tokens), labels).item()
    restricted, excluded = restricted_excluded_loss(FourierModel(2), P, tokens, labels, [2])
    assert restricted == pytest.approx(full, abs=1e-6)  # the logits live on that frequency
    assert excluded == pytest.approx(math.log(P), abs=1e-6)  # nothing left: uniform
    # the wrong frequency: restricted is uniform, excluded keeps everything
    restricted, excluded = restricted_excluded_loss(FourierModel(2), P, tokens, labels, [4])
    assert restricted == pytest.approx(math.log(P), abs=1e-6) and excluded == pytest.approx(full)


def test_tms_counts_represented_features_and_recognises_a_regular_pentagon() -> None:
    angles = torch.arange(5) * 2 * math.pi / 5
    W = torch.cat([torch.stack([angles.cos(), angles.sin()]), torch.zeros(2, 1)], 1)  # 5 + 1 dead
    out = tms_measures(W)
    assert out["features_represented"] == 5 and out["kgon_k"] == 5
    assert out["kgon_irregularity"] == pytest.approx(0.0, abs=1e-6)
    W[:, 1] = W[:, 0] * 0.99 + 0.01  # two features on top of each other: not a regular 5-gon
    assert tms_measures(W)["kgon_irregularity"] > 0.5


def test_prefix_matching_score_is_one_for_a_head_built_to_prefix_match() -> None:
    """Layer 1 head 0 attends from position t to t - half + 1 by position alone (one-hot
    positions, zero token embedding and layer 0): a perfect prefix matcher; head 1 is
    uniform."""
    T, half = 12, 6
    task = get_task(
        "attention_lm",
        {"d_model": 32, "n_heads": 2, "vocab": 8, "seq_len": T, "span_min": 3, "span_max": 5},
    )
    model = task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.pos_embed[:, :T] = torch.eye(T)
        head = model.blocks[1]
        head.W_Q[0, :T, :T] = torch.eye(T) * 30
        for s in range(T - half + 1):
            head.W_K[0, s, s + half - 1] = 30.0
    scores = prefix_matching_scores(model, 8, T, layer=1)
    assert scores[0] == pytest.approx(1.0, abs=1e-3)
    assert scores[1] < 0.2  # uniform attention over positions 7..11: 1/8 .. 1/12


def test_prefix_matching_scores_are_attention_fractions_one_per_last_layer_head() -> None:
    task = get_task(
        "attention_lm",
        {"d_model": 16, "n_heads": 2, "vocab": 8, "seq_len": 12, "span_min": 3, "span_max": 5},
    )
    torch.manual_seed(0)
    scores = prefix_matching_scores(task.build_model(), 8, 12, layer=1)
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)


def test_icl_score_is_negative_when_late_tokens_are_easier() -> None:
    """A model that is sure of every target after position 8 and unsure before."""

    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            nxt = torch.cat([tokens[:, 1:], tokens[:, :1]], 1)
            logits = torch.zeros(*tokens.shape, 8)
            logits[:, 8:] = 10 * nn.functional.one_hot(nxt[:, 8:], 8).float()
            return logits

    tokens = torch.randint(8, (4, 12), generator=torch.Generator().manual_seed(0))
    targets = torch.cat([tokens[:, 1:], torch.full((4, 1), -1)], 1)
    score = icl_score(Oracle(), tokens, targets)
    assert score == pytest.approx(0.0 - math.log(8), abs=1e-2)


def test_prefix_matching_from_a_pattern_reads_attention_to_the_token_after_the_first_copy() -> None:
    """Head 0 attends from 6 + j to j + 1 only (score 1), head 1 uniformly over the causal
    prefix (1 / (7 + j)), head 2 to the current token only (score 0)."""
    T, half = 12, 6
    tokens = repeated_random_tokens(8, T, 3, seed=1)
    assert tokens.shape == (3, T) and torch.equal(tokens[:, :half], tokens[:, half:])
    pattern = torch.zeros(3, 3, T, T)
    for q in range(T):
        pattern[:, 0, q, q - half + 1 if q >= half else 0] = 1.0
        pattern[:, 1, q, : q + 1] = 1.0 / (q + 1)
        pattern[:, 2, q, q] = 1.0
    scores = prefix_matching_from_pattern(pattern)
    uniform = sum(1 / (half + 1 + j) for j in range(half - 1)) / (half - 1)
    assert scores == pytest.approx([1.0, uniform, 0.0], abs=1e-6)


def test_icl_score_in_batches_through_a_forward_equals_one_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(8, 8), nn.Linear(8, 8))
    tokens = torch.randint(8, (10, 12), generator=torch.Generator().manual_seed(0))
    targets = next_token_targets(tokens)
    assert torch.equal(targets[:, :-1], tokens[:, 1:]) and (targets[:, -1] == -1).all()
    whole = icl_score(model, tokens, targets, batch_size=10)
    batched = icl_score(model, tokens, targets, batch_size=3, forward=lambda m, t: m(t))
    assert batched == pytest.approx(whole, abs=1e-9)
