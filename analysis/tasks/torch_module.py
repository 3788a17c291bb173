"""``torch_module``: any architecture whose package is installed on the workers.

Config::

    {"factory": "my_pkg.models:make_model", "kwargs": {...}, "loss": "cross_entropy"}

``factory(**kwargs)`` must return an ``nn.Module``. A factory is never imported as a request
names it: it must be an entry point of group ``phaseboard.models`` (by name or target) or
match one of the ``allowed_factories`` patterns the caller passes (the server passes
``PHASEBOARD_MODEL_FACTORIES``); see ``analysis.tasks.factories``. Anything else is refused
with ``FactoryNotAllowed`` before any import. A notebook passes its own::

    get_task("torch_module", {"factory": "my_pkg:make"}, allowed_factories=["my_pkg:make"])

Data, by ``loss`` (a closed list: ``cross_entropy``, ``mse``):
- ``cross_entropy`` without ``data_factory``: the model maps (B, T) token ids to (B, T, V)
  logits; next-token loss on the run's uploaded token data (``analysis.tasks._generic``).
- with ``data_factory`` (``"pkg.mod:make_data"``, allowed by the same rule, called with
  ``data_kwargs``), which returns ``{"train": (x, y), "test": (x, y), ...}``:
  ``cross_entropy`` is ``F.cross_entropy(model(x), y)`` (classification), ``mse`` is
  ``F.mse_loss(model(x), y)``.
Weight groups: one per module that owns parameters. Progress measure: the ICL score, on
token data only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._generic import TOKEN_DATA_DEFAULTS, TokenDataTask, unigram_chance
from .base import TensorDataset
from .factories import check_factory, load_factory

LOSSES = ("cross_entropy", "mse")


def check_torch_module_config(config: Mapping[str, Any], allowed: Iterable[str] = ()) -> None:
    """The config's code-naming values without importing anything: ``factory`` and
    ``data_factory`` allowed (``analysis.tasks.factories``), ``loss`` from ``LOSSES``,
    ``kwargs`` / ``data_kwargs`` dicts. Raises ``ValueError`` naming the key."""
    allowed = tuple(allowed)
    check_factory(config.get("factory"), allowed, key="factory")
    if config.get("data_factory") not in (None, ""):
        check_factory(config["data_factory"], allowed, key="data_factory")
    loss = config.get("loss", "cross_entropy")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}"[:200])
    for key in ("kwargs", "data_kwargs"):
        if not isinstance(config.get(key, {}), Mapping):
            raise ValueError(f"{key} must be a dict, got {type(config[key]).__name__}")


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

    takes_allowed_factories: ClassVar[bool] = True
    """``get_task`` passes its ``allowed_factories`` to this task's constructor."""

    def __init__(
        self, config: Mapping[str, Any] | None = None, *, allowed_factories: Iterable[str] = ()
    ) -> None:
        self.allowed_factories = tuple(allowed_factories)
        super().__init__(config)

    def validate_config(self, config: dict[str, Any]) -> None:
        super().validate_config(config)
        check_torch_module_config(config, self.allowed_factories)
        if config["loss"] == "mse" and not config["data_factory"]:
            raise ValueError("loss 'mse' needs a data_factory returning (x, y) splits")
        self._factory = load_factory(config["factory"], self.allowed_factories)
        self._data_factory = (
            load_factory(config["data_factory"], self.allowed_factories, key="data_factory")
            if config["data_factory"]
            else None
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

    def chance_loss(self) -> float | None:
        """On token data, ``TokenDataTask.chance_loss``. With a ``data_factory``: for
        ``cross_entropy`` the entropy of the training labels (always predicting their
        frequencies), for ``mse`` the training targets' variance (always predicting their
        mean)."""
        if self._data_factory is None:
            return super().chance_loss()
        from ..verdict import ChanceLoss

        y = self.full_batch("train")[1]
        if self.config["loss"] == "mse":
            y = y.double()
            variance = float(((y - y.mean(dim=0)) ** 2).mean())
            return ChanceLoss(variance, f"variance of {len(y):,} training targets")
        return unigram_chance(y, "training labels")

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
