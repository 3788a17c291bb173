"""Phaseboard's client: what a training script or notebook imports (``import phaseboard``).

It needs only httpx: importing it loads no torch, SQLAlchemy, Celery or FastAPI, so a
training node does not need the server's dependencies to log. The server lives in
``phaseboard.server``, the numerical library in ``phaseboard.analysis``.
"""

from __future__ import annotations

from ._client import Phaseboard, Run, RunConfig, state_dict_to_safetensors
from ._points import PhaseboardClientError, flatten_metrics, post_points
from ._spool import Spool, find_spools, sync_spool

__version__ = "0.1.0"

__all__ = [
    "Phaseboard",
    "PhaseboardClientError",
    "Run",
    "RunConfig",
    "Spool",
    "__version__",
    "find_spools",
    "flatten_metrics",
    "post_points",
    "state_dict_to_safetensors",
    "sync_spool",
]
