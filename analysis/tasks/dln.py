"""Deep linear network regression (Saxe et al.; Aoyagi's exact learning coefficient).

``y = A x + noise`` with a teacher ``A`` of rank ``true_rank``; the student is a
product of bias-free linear layers with ``widths = [in, hidden..., out]``. From a
small initialisation it learns the teacher's singular values one at a time
(saddle-to-saddle), so loss plateaus and LLC steps are visible.

Parameters: ``layers.{i}.weight`` of shape (widths[i+1], widths[i]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Task, TensorDataset


class DeepLinearNetwork(nn.Module):
    def __init__(self, widths: list[int], init_scale: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=init_scale)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class DLN(Task):
    name = "dln"
    default_config: dict[str, Any] = {
        "widths": [8, 8, 8, 8],  # [in_dim, hidden..., out_dim]
        "true_rank": 4,
        "singular_values": None,  # None -> 1, 2, ..., true_rank (distinct: clear stages)
        "num_samples": 1024,
        "num_test": 512,
        "noise": 0.1,
        "init_scale": 0.01,
        "lr": 0.01,
        "optimizer": "sgd",
        "batch_size": 128,
        "steps": 3000,
        "num_checkpoints": 40,
        "eval_every": 25,
        "seed": 0,
    }

    def validate_config(self, config: dict[str, Any]) -> None:
        widths = config["widths"]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError("widths must list at least [in_dim, out_dim], all positive")
        if not 1 <= config["true_rank"] <= min(widths[0], widths[-1]):
            raise ValueError("true_rank must be between 1 and min(in_dim, out_dim)")
        sv = config["singular_values"]
        if sv is not None and len(sv) != config["true_rank"]:
            raise ValueError("singular_values must have true_rank entries")
        if config["optimizer"] not in ("sgd", "adam"):
            raise ValueError("optimizer must be 'sgd' or 'adam'")

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        c = {**self.config, **(config or {})}
        return DeepLinearNetwork(list(c["widths"]), c["init_scale"])

    def teacher(self) -> Tensor:
        """The rank-r teacher matrix A: (out_dim, in_dim)."""
        c = self.config
        d_in, d_out, r = c["widths"][0], c["widths"][-1], c["true_rank"]
        gen = torch.Generator().manual_seed(c["seed"])
        u, _ = torch.linalg.qr(torch.randn(d_out, r, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(d_in, r, generator=gen))
        sv = c["singular_values"] or [float(i + 1) for i in range(r)]
        return u @ torch.diag(torch.tensor(sv, dtype=torch.float32)) @ v.T

    def _make_datasets(self) -> dict[str, TensorDataset]:
        c = self.config
        gen = torch.Generator().manual_seed(c["seed"] + 1)
        a = self.teacher()
        n = c["num_samples"] + c["num_test"]
        x = torch.randn(n, c["widths"][0], generator=gen)
        y = x @ a.T + c["noise"] * torch.randn(n, c["widths"][-1], generator=gen)
        train = TensorDataset(x[: c["num_samples"]], y[: c["num_samples"]])
        test = TensorDataset(x[c["num_samples"] :], y[c["num_samples"] :])
        half = c["num_samples"] // 2
        return {
            "train": train,
            "test": test,
            "first_half": TensorDataset(*(t[:half] for t in train.tensors)),
            "second_half": TensorDataset(*(t[half:] for t in train.tensors)),
        }

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.config["optimizer"] == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.config["lr"])
        return torch.optim.SGD(model.parameters(), lr=self.config["lr"])
