"""Phaseboard's numerical library (``phaseboard.analysis``): torch + numpy, never the server.

Plain functions on tensors and ``nn.Module``s, usable from a notebook::

    from phaseboard.analysis import LLCConfig, estimate_llc, get_task

(restricted LLCs: ``estimate_llc_restricted`` with ``mask_by_pattern`` or
``attention_head_masks``, ``estimate_llc_data_restricted`` on data subsets; hyperparameters:
``calibrate``; stage boundaries: ``detect_boundaries``; tasks: ``get_task``, ``list_tasks``).

The names below load lazily, so importing a torch-free part (``checkpoints.mapping``) does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LLCConfig": "llc",
    "LLCResult": "llc",
    "estimate_llc": "llc",
    "estimate_llc_many": "llc",
    "calibrate": "llc",
    "CalibrationReport": "llc",
    "estimate_llc_restricted": "restrict",
    "estimate_llc_restricted_many": "restrict",
    "estimate_llc_data_restricted": "restrict",
    "estimate_llc_data_restricted_many": "restrict",
    "mask_by_pattern": "restrict",
    "attention_head_masks": "restrict",
    "detect_boundaries": "phases",
    "Task": "tasks",
    "get_task": "tasks",
    "list_tasks": "tasks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
