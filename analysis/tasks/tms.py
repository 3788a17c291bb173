"""Toy model of superposition (Elhage et al. 2022; Chen et al. 2023 for its LLC).

``x_hat = ReLU(W^T W x + b)`` with ``W`` (m, n) compresses n sparse features into
m < n hidden dimensions. Each feature is active with probability ``1 - sparsity``,
uniform on [0, 1] when active. With n=6, m=2 the weights move between k-gon
configurations, each with a known LLC.

Parameters: ``W`` (m, n), ``b`` (n,).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .base import PROBE_SEED, Task, TensorDataset


class ToyModel(nn.Module):
    def __init__(self, n_features: int, n_hidden: int, init_scale: float) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_hidden, n_features) * init_scale)
        self.b = nn.Parameter(torch.zeros(n_features))

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, n) -> h: (B, m) -> x_hat: (B, n)
        return torch.relu((x @ self.W.T) @ self.W + self.b)


class TMS(Task):
    name = "tms"
    default_config: dict[str, Any] = {
        "n_features": 6,
        "n_hidden": 2,
        "sparsity": 0.9,  # probability that a feature is zero
        "importance_decay": 1.0,  # importance of feature i is decay**i (1.0 = all equal)
        "num_samples": 2048,
        "num_test": 1024,
        "init_scale": 0.1,
        "lr": 0.005,
        "batch_size": 256,
        "steps": 4000,
        "num_checkpoints": 40,
        "eval_every": 50,
        "seed": 0,
    }

    def validate_config(self, config: dict[str, Any]) -> None:
        if not 0 <= config["sparsity"] < 1:
            raise ValueError("sparsity must be in [0, 1)")
        if config["n_hidden"] < 1 or config["n_features"] < 1:
            raise ValueError("n_features and n_hidden must be positive")

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        c = {**self.config, **(config or {})}
        return ToyModel(c["n_features"], c["n_hidden"], c["init_scale"])

    def importance(self) -> Tensor:
        c = self.config
        return c["importance_decay"] ** torch.arange(c["n_features"], dtype=torch.float32)

    def _sample(self, n: int, seed: int) -> Tensor:
        """``n`` sparse feature vectors: uniform values, each feature active w.p. 1 - sparsity."""
        c = self.config
        gen = torch.Generator().manual_seed(seed)
        values = torch.rand(n, c["n_features"], generator=gen)
        active = torch.rand(n, c["n_features"], generator=gen) >= c["sparsity"]
        return values * active

    def shared_probe(self, n: int) -> tuple[Tensor, ...]:
        return (self._sample(n, PROBE_SEED),)

    def _make_datasets(self) -> dict[str, TensorDataset]:
        c = self.config
        x = self._sample(c["num_samples"] + c["num_test"], c["seed"])
        train = TensorDataset(x[: c["num_samples"]])
        test = TensorDataset(x[c["num_samples"] :])
        k = (train.tensors[0] > 0).sum(1)
        return {
            "train": train,
            "test": test,
            "single_feature": train.subset(k == 1),
            "multi_feature": train.subset(k >= 2),
        }

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        (x,) = batch
        return ((model(x) - x) ** 2 * self.importance().to(x)).sum(-1).mean()

    def progress_measures(self, model: nn.Module) -> dict[str, float]:
        """Features represented (column norm of W above 0.5) and their k-gon."""
        from ..progress import tms_measures

        return tms_measures(model.W)
