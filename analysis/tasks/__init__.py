"""Task registry: built-in tasks plus entry points in group ``phaseboard.tasks``.

A third-party package registers a task in its ``pyproject.toml``::

    [project.entry-points."phaseboard.tasks"]
    my_task = "my_pkg.tasks:MyTask"    # a Task subclass, or a factory(config) -> Task

Entry points are discovered lazily (the first time a name is not a built-in, or on
``list_tasks()``), so importing this package never imports user code. Task names are a closed
list (built-ins and installed entry points); ``torch_module``'s model factories come only
from the ``phaseboard.models`` entry points or the caller's ``allowed_factories``
(``analysis.tasks.factories``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from .base import (
    CheckpointMismatch,
    ParamMask,
    Task,
    TensorDataset,
    TrainPoint,
    log_spaced_steps,
    to_device,
)
from .factories import MODELS_ENTRY_POINT_GROUP, FactoryNotAllowed

ENTRY_POINT_GROUP = "phaseboard.tasks"

# name -> ".module:attribute" (relative to this package), imported on first use
_BUILTINS: dict[str, str] = {
    "dln": ".dln:DLN",
    "modular_addition": ".modular_addition:ModularAddition",
    "tms": ".tms:TMS",
    "attention_lm": ".attention_lm:AttentionLM",
    # Generic tasks for users' own models (data: the run's uploaded token datasets).
    "hf_causal_lm": ".hf_causal_lm:HFCausalLM",
    "transformer_lens": ".hooked_transformer:HookedTransformerTask",
    "torch_module": ".torch_module:TorchModule",
}


class UnknownTask(KeyError, ValueError):
    """No built-in task or entry point has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown task {name!r}; known tasks: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_tasks() -> list[str]:
    """Names of the built-in tasks and of the installed entry-point tasks."""
    return sorted(set(_BUILTINS) | set(_entry_points()))


def _load(name: str) -> Callable[..., Task]:
    if name in _BUILTINS:
        module, attr = _BUILTINS[name].split(":")
        return getattr(importlib.import_module(module, __package__), attr)
    eps = _entry_points()
    if name not in eps:
        raise UnknownTask(name, list_tasks())
    return eps[name].load()


def get_task(
    name: str,
    config: Mapping[str, Any] | None = None,
    *,
    allowed_factories: Iterable[str] = (),
) -> Task:
    """Instantiate task ``name`` with ``config`` merged over its defaults.

    ``allowed_factories``: patterns of ``package.module:function`` model factories a
    ``torch_module`` config may name besides the installed ``phaseboard.models`` entry points.
    """
    factory = _load(name)
    if getattr(factory, "takes_allowed_factories", False):
        task = factory(dict(config or {}), allowed_factories=tuple(allowed_factories))
    else:
        task = factory(dict(config or {}))
    if not isinstance(task, Task):
        raise TypeError(f"entry point {name!r} returned {type(task).__name__}, not a Task")
    return task


__all__ = [
    "ENTRY_POINT_GROUP",
    "MODELS_ENTRY_POINT_GROUP",
    "CheckpointMismatch",
    "FactoryNotAllowed",
    "ParamMask",
    "Task",
    "TensorDataset",
    "TrainPoint",
    "UnknownTask",
    "get_task",
    "list_tasks",
    "log_spaced_steps",
    "to_device",
]
