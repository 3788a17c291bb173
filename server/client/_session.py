"""``phaseboard.init`` and the module-level ``log`` / ``log_checkpoint`` / ``finish``, as in wandb.

    import phaseboard

    run = phaseboard.init(name="grokking-p53", task="modular_addition",
                          task_config={"p": 53}, config={"lr": 1e-3})
    for step in range(steps):
        ...
        phaseboard.log({"train/loss": loss.item()}, step=step)   # or run.log(...)
        if step % 100 == 0:
            phaseboard.log_checkpoint(step, model)
    phaseboard.finish()

``init`` makes the run *current*: the module-level functions act on it and ``phaseboard.run``
is it (None when there is none or it has finished). A second ``init`` finishes the current run
first. A run is found by its name: ``init`` with the name of an existing run resumes it (its
steps continue after its largest logged step), as ``Phaseboard(url).run(name)`` does. Without
a name, a new one is made from the task and the time. Clients are kept per (url, token, mode,
spool directory), so repeated ``init`` calls share one connection pool.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._client import Mode, Phaseboard, Run
from ._env import resolve_token, resolve_url
from ._points import PhaseboardClientError

__all__ = ["current_run", "finish", "init", "log", "log_checkpoint"]

_lock = threading.Lock()
_clients: dict[tuple[str, str | None, str, str | None], Phaseboard] = {}
_current: Run | None = None


def default_run_name(task: str | None = None) -> str:
    """``<task or "run">-<YYYYmmdd-HHMMSS>-<4 hex>``: new on every call."""
    return f"{task or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _client_for(
    url: str | None, token: str | None, mode: Mode, spool_dir: str | Path | None
) -> Phaseboard:
    key = (
        resolve_url(url),
        resolve_token(token),
        mode,
        str(Path(spool_dir).expanduser()) if spool_dir else None,
    )
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = Phaseboard(
            key[0], token=key[1] or "", mode=mode, spool_dir=spool_dir
        )
    return client


def init(
    name: str | None = None,
    *,
    task: str | None = None,
    task_config: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    tags: list[str] | None = None,
    notes: str | None = None,
    analysis_config: Mapping[str, Any] | None = None,
    url: str | None = None,
    token: str | None = None,
    mode: Mode = "online",
    spool_dir: str | Path | None = None,
) -> Run:
    """Start (or resume, by ``name``) a run and make it the current one; returns it.

    ``task``/``task_config`` say how workers rebuild the model from a checkpoint (e.g.
    ``"hf_causal_lm"``, ``{"hf_config": model.config.to_dict()}``); ``config`` holds the
    hyperparameters. ``url`` and ``token`` default to ``PHASEBOARD_URL`` and
    ``PHASEBOARD_API_TOKEN`` (else the local server, no token). A server that cannot be
    reached (or ``mode="offline"``) spools the run to ``spool_dir`` for ``phaseboard sync``;
    a refusal (bad token, unknown task) raises ``PhaseboardClientError`` before training.
    """
    global _current
    with _lock:
        previous, _current = _current, None
    if previous is not None:
        previous.finish()
    client = _client_for(url, token, mode, spool_dir)
    run = client.run(
        name if name is not None else default_run_name(task),
        task=task,
        task_config=task_config,
        tags=tags,
        notes=notes,
        analysis_config=analysis_config,
        config=config,
    )
    with _lock:
        _current = run
    return run


def current_run() -> Run | None:
    """The run of the last ``init``, or None when there is none or it has finished."""
    run = _current
    return run if run is not None and not run.finished else None


def _require(what: str) -> Run:
    run = current_run()
    if run is None:
        raise PhaseboardClientError(
            f"phaseboard.{what}() needs a run: call phaseboard.init() first"
        )
    return run


def log(metrics: Mapping[str, Any], step: int | None = None, *, commit: bool = True) -> None:
    """``run.log`` on the current run (see ``Run.log`` for the step rules)."""
    _require("log").log(metrics, step=step, commit=commit)


def log_checkpoint(step: int, model_or_state_dict: Any) -> dict[str, Any] | None:
    """``run.log_checkpoint`` on the current run."""
    return _require("log_checkpoint").log_checkpoint(step, model_or_state_dict)


def finish(status: str = "finished") -> None:
    """Finish the current run (``"finished"``, or ``"crashed"``); nothing when there is none."""
    global _current
    with _lock:
        run, _current = _current, None
    if run is not None:
        run.finish(status=status)
