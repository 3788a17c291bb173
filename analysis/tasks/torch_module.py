"""``torch_module``: any architecture whose package is installed on the workers.

Config::

    {"factory": "my_pkg.models:make_model", "kwargs": {...}, "loss": "cross_entropy"}

``factory(**kwargs)`` must return an ``nn.Module``. The factory is imported on the worker
from installed packages only; the server never executes uploaded code, and a name that is
not importable fails the job with that message.

Data, by ``loss``:
- ``cross_entropy`` without ``data_factory``: the model maps (B, T) token ids to (B, T, V)
  logits; next-token loss on the run's uploaded token data (``analysis.tasks._generic``).
- with ``data_factory`` (``"pkg.mod:make_data"``, called with ``data_kwargs``), which
  returns ``{"train": (x, y), "test": (x, y), ...}``: ``cross_entropy`` is
  ``F.cross_entropy(model(x), y)`` (classification), ``mse`` is ``F.mse_loss(model(x), y)``.
Weight groups: one per module that owns parameters. Progress measure: the ICL score, on
token data only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._generic import TOKEN_DATA_DEFAULTS, TokenDataTask
from .base import TensorDataset

LOSSES = ("cross_entropy", "mse")


def import_object(spec: str) -> Callable[..., Any]:
    """``"package.module:attribute"`` -> the attribute (installed code only)."""
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"cannot import {module!r} on this worker: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    return obj


class TorchModule(TokenDataTask):
    name = "torch_module"
    default_config: dict[str, Any] = {
        "factory": "",
        "kwargs": {},
        "loss": "cross_entropy",
        "data_factory": None,
        "data_kwargs": {},
        **TOKEN_DATA_DEFAULTS,
    }

    def validate_config(self, config: dict[str, Any]) -> None:
        super().validate_config(config)
        if config["loss"] not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {config['loss']!r}")
        if config["loss"] == "mse" and not config["data_factory"]:
            raise ValueError("loss 'mse' needs a data_factory returning (x, y) splits")
        for key in ("kwargs", "data_kwargs"):
            if not isinstance(config[key], Mapping):
                raise ValueError(f"{key} must be a dict, got {type(config[key]).__name__}")
        self._factory = import_object(config["factory"])
        self._data_factory = (
            import_object(config["data_factory"]) if config["data_factory"] else None
        )

    @property
    def uses_token_data(self) -> bool:  # type: ignore[override]
        return self._data_factory is None

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        c = {**self.config, **(config or {})}
        model = self._factory(**dict(c["kwargs"]))
        if not isinstance(model, nn.Module):
            raise TypeError(f"{c['factory']} returned {type(model).__name__}, not an nn.Module")
        return model.eval()

    def _make_datasets(self) -> dict[str, TensorDataset]:
        if self._data_factory is None:
            return super()._make_datasets()
        splits = self._data_factory(**dict(self.config["data_kwargs"]))
        if not isinstance(splits, Mapping) or "train" not in splits or "test" not in splits:
            raise ValueError("data_factory must return {'train': (x, y), 'test': (x, y), ...}")
        return {name: TensorDataset(*map(torch.as_tensor, xy)) for name, xy in splits.items()}

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        if self._data_factory is None:
            return super().loss(model, batch)
        x, y = batch
        out = model(x)
        if self.config["loss"] == "mse":
            return F.mse_loss(out, y)
        return F.cross_entropy(out.float(), y)

    def progress_measures(self, model: nn.Module) -> dict[str, float]:
        """The ICL score on token data (``TokenDataTask.progress_measures``); nothing with a
        ``data_factory``, whose (x, y) need not be sequences. An arbitrary module exposes no
        attention patterns, so there is no prefix matching."""
        if self._data_factory is not None:
            return {}
        return super().progress_measures(model)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, batch: tuple[Tensor, ...]) -> float | None:
        if self._data_factory is None:
            return super().accuracy(model, batch)
        if self.config["loss"] == "mse":
            return None
        x, y = batch
        return (model(x).argmax(-1) == y).float().mean().item()
