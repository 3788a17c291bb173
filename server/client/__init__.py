"""Phaseboard's client: what a training script or notebook imports (``import phaseboard``).

Shaped like wandb::

    import phaseboard

    run = phaseboard.init(name="my-run", task="modular_addition", config={"lr": 1e-3})
    run.log({"train/loss": 0.1}, step=10)       # or phaseboard.log(...)
    run.log_checkpoint(10, model)               # or phaseboard.log_checkpoint(...)
    run.finish()                                # or phaseboard.finish()

``phaseboard.Phaseboard(url).run(name, ...)`` is the explicit client. ``phaseboard.run`` is the
current run of ``init`` (None without one). The server URL and token default to
``PHASEBOARD_URL`` and ``PHASEBOARD_API_TOKEN``.

It needs only httpx: importing it loads no torch, SQLAlchemy, Celery or FastAPI, so a
training node does not need the server's dependencies to log. The Hugging Face callback and
the Lightning logger are in ``phaseboard.integrations``, the server in ``phaseboard.server``,
the numerical library in ``phaseboard.analysis`` (each loaded only when imported).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._client import Phaseboard, Run, RunConfig, state_dict_to_safetensors
from ._points import PhaseboardClientError, flatten_metrics, post_points
from ._session import current_run, finish, init, log, log_checkpoint
from ._spool import Spool, find_spools, sync_spool

__version__ = "0.1.0"

__all__ = [
    "Phaseboard",
    "PhaseboardClientError",
    "Run",
    "RunConfig",
    "Spool",
    "__version__",
    "current_run",
    "find_spools",
    "finish",
    "flatten_metrics",
    "init",
    "log",
    "log_checkpoint",
    "post_points",
    "state_dict_to_safetensors",
    "sync_spool",
]

# Subpackages loaded on first attribute access (``phaseboard.analysis.estimate_llc`` without
# an ``import phaseboard.analysis``); importing ``phaseboard`` itself stays light.
_SUBPACKAGES = ("analysis", "integrations", "server")


def __getattr__(name: str) -> Any:
    if name == "run":  # the current run, read at each access as ``wandb.run`` is
        return current_run()
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"run", *_SUBPACKAGES})
