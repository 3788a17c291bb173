"""Loggers for training frameworks, the way W&B, MLflow and Aim ship theirs.

- ``PhaseboardCallback``: a Hugging Face ``transformers.TrainerCallback`` (metrics, saved
  checkpoints, the run's task and hyperparameters from the Trainer).
- ``PhaseboardLogger``: a PyTorch Lightning ``Logger`` (metrics, hyperparameters, the
  checkpoints ``ModelCheckpoint`` saves).

Both load lazily: ``import phaseboard.integrations`` imports neither ``transformers`` nor
``lightning``; naming one of the classes imports its framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .huggingface import PhaseboardCallback
    from .lightning import PhaseboardLogger

_LAZY = {"PhaseboardCallback": "huggingface", "PhaseboardLogger": "lightning"}

__all__ = ["PhaseboardCallback", "PhaseboardLogger"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
