"""Grokking on modular addition (Power et al. 2022; Nanda et al. 2023).

A one-layer transformer reads ``a b =`` and predicts ``(a + b) mod p`` at ``=``.
Trained full-batch with AdamW and strong weight decay on a fraction of all p^2
pairs, it first memorises (train accuracy 1, test accuracy at chance), then
forms a Fourier circuit and cleans up the memorising weights (test accuracy jumps).
Default config, measured: train acc 1.0 by step ~180 (test acc 0.2), test acc 0.53
at 1500, 0.87 at 3000, 0.97 at 5000; the test loss drops sharply around step 2000.

Parameters: ``embed.weight`` (p+1, d), ``pos_embed`` (3, d), ``attn.W_Q/W_K/W_V``
(H, d, d_head), ``attn.W_O`` (H, d_head, d), ``mlp.W_in`` (d, d_mlp), ``mlp.b_in``,
``mlp.W_out`` (d_mlp, d), ``mlp.b_out``, ``unembed.weight`` (p, d).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._transformer import Attention, attention_head_names
from .base import (
    PROBE_SEED,
    ParamMask,
    Task,
    TensorDataset,
    head_mask,
    layer_groups,
)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp) / d_model**0.5)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model) / d_mlp**0.5)
        self.b_out = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class OneLayerTransformer(nn.Module):
    """Embed -> attention -> MLP -> unembed, residual stream, no LayerNorm (as Nanda)."""

    def __init__(self, p: int, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(p + 1, d_model)  # token p is "="
        self.pos_embed = nn.Parameter(torch.randn(3, d_model) / d_model**0.5)
        self.attn = Attention(d_model, n_heads, d_model // n_heads)
        self.mlp = MLP(d_model, d_mlp)
        self.unembed = nn.Linear(d_model, p, bias=False)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos_embed  # (B, 3, d)
        # Only "=" is read out, so attention and the MLP only need that position.
        x = x[:, -1] + self.attn(x, last_only=True)[:, 0]
        x = x + self.mlp(x)
        return self.unembed(x)  # logits at "=": (B, p)


class ModularAddition(Task):
    name = "modular_addition"
    default_config: dict[str, Any] = {
        "p": 53,
        "train_fraction": 0.4,
        "d_model": 32,
        "n_heads": 4,
        "d_mlp": 128,
        "lr": 3e-3,  # at 1e-3 (Nanda et al.) test acc was still 0.17 after 1750 steps
        "weight_decay": 1.0,  # 1.5 groks ~6x sooner (the fast config of the tests)
        "betas": [0.9, 0.98],  # a list: configs round-trip through JSON
        "batch_size": None,  # full batch, as in the grokking papers
        "steps": 5000,
        "num_checkpoints": 48,
        "eval_every": 50,
        "seed": 0,
    }

    def validate_config(self, config: dict[str, Any]) -> None:
        if config["p"] < 2:
            raise ValueError("p must be at least 2")
        if not 0 < config["train_fraction"] < 1:
            raise ValueError("train_fraction must be in (0, 1)")
        if config["d_model"] % config["n_heads"]:
            raise ValueError("d_model must be divisible by n_heads")

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        c = {**self.config, **(config or {})}
        return OneLayerTransformer(c["p"], c["d_model"], c["n_heads"], c["d_mlp"])

    def _all_pairs(self) -> tuple[Tensor, Tensor]:
        """Every input ``a b =`` as tokens (p*p, 3) and its label ``(a + b) mod p``."""
        p = self.config["p"]
        a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
        return torch.stack([a, b, torch.full_like(a, p)], dim=1), (a + b) % p

    def _make_datasets(self) -> dict[str, TensorDataset]:
        p = self.config["p"]
        tokens, labels = self._all_pairs()
        gen = torch.Generator().manual_seed(self.config["seed"])
        order = torch.randperm(p * p, generator=gen)
        n_train = int(round(self.config["train_fraction"] * p * p))
        train = TensorDataset(tokens[order[:n_train]], labels[order[:n_train]])
        test = TensorDataset(tokens[order[n_train:]], labels[order[n_train:]])
        # Subsets are of the training split (data-restricted LLC uses training data).
        ta, tb = train.tensors[0][:, 0], train.tensors[0][:, 1]
        return {
            "train": train,
            "test": test,
            "a_even": train.subset(ta % 2 == 0),
            "small_sums": train.subset(ta + tb < p),  # no wrap-around
            "wrapped_sums": train.subset(ta + tb >= p),
        }

    def shared_probe(self, n: int) -> tuple[Tensor, ...]:
        """``n`` of all p^2 pairs in a fixed order (train and test pairs alike: the split is
        what the data seed changes)."""
        tokens, labels = self._all_pairs()
        gen = torch.Generator().manual_seed(PROBE_SEED)
        order = torch.randperm(len(tokens), generator=gen)[:n]
        return tokens[order], labels[order]

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        tokens, labels = batch
        return F.cross_entropy(model(tokens).float(), labels)

    def chance_loss(self) -> float | None:
        from ..verdict import ChanceLoss

        p = self.config["p"]
        return ChanceLoss(math.log(p), f"ln({p} classes)")  # a uniform guess over p classes

    def per_example_loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        tokens, labels = batch
        return F.cross_entropy(model(tokens).float(), labels, reduction="none")

    def outputs(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        return F.log_softmax(model(batch[0]).float(), dim=-1)

    def describe_examples(self, batch: tuple[Tensor, ...]) -> list[str]:
        tokens, labels = batch[0].tolist(), batch[1].tolist()
        return [f"{t[0]} + {t[1]} = {y}" for t, y in zip(tokens, labels, strict=True)]

    @torch.no_grad()
    def accuracy(self, model: nn.Module, batch: tuple[Tensor, ...]) -> float | None:
        tokens, labels = batch
        return (model(tokens).argmax(-1) == labels).float().mean().item()

    def progress_measures(self, model: nn.Module) -> dict[str, float]:
        """Restricted/excluded loss on the key frequencies of this checkpoint's embedding
        (its 5 strongest), Gini of the Fourier norms, top frequency (analysis.progress)."""
        from ..progress import modular_addition_measures

        tokens, labels = self.full_batch("train")
        return modular_addition_measures(model, self.config["p"], tokens, labels)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(
            model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"], betas=tuple(c["betas"])
        )

    def weight_groups(self, model: nn.Module) -> dict[str, ParamMask]:
        groups = layer_groups(model)
        attn = model.attn
        for name, _, h in attention_head_names(1, self.config["n_heads"]):
            groups[name] = {
                f"attn.{w}": head_mask(getattr(attn, w), h) for w in ("W_Q", "W_K", "W_V", "W_O")
            }
        return groups
