"""A run's task config checked against what the operator installed, before it is stored.

A task config may name code: ``torch_module``'s ``factory`` and ``data_factory``. Such a name
comes from a request, so it is accepted only when it is an installed ``phaseboard.models``
entry point or matches ``PHASEBOARD_MODEL_FACTORIES`` (``analysis.tasks.factories``); the
check imports nothing. Every route that stores a task config calls ``check_task_config`` on
the task and config the run will have (``POST``/``PATCH /api/runs``, the run header form),
and the upload and job paths pass the same allow-list to ``get_task``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phaseboard.server.errors import BadInput
from phaseboard.server.settings import Settings

SETTING = "PHASEBOARD_MODEL_FACTORIES"


def check_task_config(settings: Settings, task: str | None, config: Mapping[str, Any]) -> None:
    """Raise ``BadInput`` (422) naming the key when ``config`` names code not allowed here."""
    if task != "torch_module":
        return
    from phaseboard.analysis.tasks.factories import FactoryNotAllowed
    from phaseboard.analysis.tasks.torch_module import check_torch_module_config

    try:
        check_torch_module_config(config, settings.model_factory_patterns)
    except FactoryNotAllowed as exc:
        raise BadInput(
            f"task_config.{exc.key}: {str(exc.spec)[:120]!r} is not an installed model factory "
            f"and was not imported; allowed: {exc.allowed} (install one as an entry point of "
            f"group 'phaseboard.models', or list it in {SETTING})"
        ) from None
    except ValueError as exc:
        raise BadInput(f"task_config: {exc}") from None


def check_factory_patterns(settings: Settings) -> None:
    """Refuse a ``PHASEBOARD_MODEL_FACTORIES`` that could match code the operator did not
    mean (run once at start-up)."""
    from phaseboard.analysis.tasks.factories import check_patterns

    try:
        check_patterns(settings.model_factory_patterns)
    except ValueError as exc:
        raise ValueError(f"{SETTING}: {exc}") from None
