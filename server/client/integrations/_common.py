"""What the framework integrations share: their run (attached or their own) and JSON-safe config."""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._client import Run
from .._session import current_run, init

__all__ = ["RunOptions", "is_number", "json_safe", "start_run", "warn"]


class RunOptions:
    """The ``phaseboard.init`` arguments an integration holds until it starts its run."""

    def __init__(
        self,
        name: str | None,
        *,
        task: str | None,
        task_config: Mapping[str, Any] | None,
        config: Mapping[str, Any] | None,
        tags: list[str] | None,
        notes: str | None,
        url: str | None,
        token: str | None,
        mode: str,
        spool_dir: str | Path | None,
    ) -> None:
        self.name = name
        self.task = task
        self.task_config = dict(task_config) if task_config is not None else None
        self.config = dict(config or {})
        self.tags = tags
        self.notes = notes
        self.url, self.token, self.mode, self.spool_dir = url, token, mode, spool_dir


def start_run(
    options: RunOptions,
    name: str,
    task: str | None,
    task_config: Mapping[str, Any] | None,
    config: Mapping[str, Any],
) -> tuple[Run, bool]:
    """The current ``phaseboard.init`` run if there is one (``config`` merged into it), else a
    new current run; and whether the integration owns it (and so finishes it)."""
    run = current_run()
    if run is not None:
        if config:
            run.config.update(config)
        return run, False
    run = init(
        name,
        task=task,
        task_config=task_config,
        config=config,
        tags=options.tags,
        notes=options.notes,
        url=options.url,
        token=options.token,
        mode=options.mode,  # type: ignore[arg-type]
        spool_dir=options.spool_dir,
    )
    return run, True


def is_number(value: Any) -> bool:
    """A Python/numpy number or a tensor: what ``Run.log`` takes (it drops non-finite ones)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) or hasattr(value, "item")


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON the server stores: containers kept, numbers finite, the rest ``str``."""
    if depth > 20:
        return str(value)
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return json_safe(value.value, depth + 1)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy/torch scalar
        return json_safe(value.item(), depth + 1)
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":  # argparse
        return json_safe(vars(value), depth + 1)
    return str(value)


def warn(message: str) -> None:
    """A warning shown at the framework's call site (never an exception into training)."""
    warnings.warn(f"phaseboard: {message}", stacklevel=3)
