"""``PhaseboardLogger``: a PyTorch Lightning ``Logger`` that logs its run to Phaseboard.

    from phaseboard.integrations import PhaseboardLogger

    logger = PhaseboardLogger("dln-run", task="dln", task_config={"widths": [8, 8, 8]})
    trainer = lightning.Trainer(logger=logger,
                                callbacks=[ModelCheckpoint(every_n_train_steps=100, save_top_k=-1)])
    trainer.fit(module, data)

Metrics (``self.log`` in the module) go to the run at Lightning's step, hyperparameters
(``self.save_hyperparameters()``) into its config, and every checkpoint ``ModelCheckpoint``
saves is uploaded at its ``global_step``: the weights only (its ``state_dict``, read with
``torch.load(weights_only=True)``; optimizer state stays on disk). The server strips the
LightningModule's attribute prefix (``model.``) when the rest fits the task's model. The run
starts at the first use (or is the one ``phaseboard.init`` made) and a run the logger started
is finished by ``finalize``: ``finished`` on success, ``crashed`` when fitting failed. Logging
again afterwards (a later ``trainer.test``) reopens the same run by name; ``experiment`` alone
does not. Only global rank 0 logs.

Refused or unreadable checkpoints are warnings, never exceptions into training.
"""

from __future__ import annotations

import pickle
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .._client import Run
from .._points import PhaseboardClientError
from .._session import default_run_name
from ._common import RunOptions, json_safe, start_run, warn

__all__ = ["PhaseboardLogger", "saved_checkpoint_paths"]


def saved_checkpoint_paths(checkpoint_callback: Any) -> list[Path]:
    """Files a ``ModelCheckpoint`` holds now: the one it just saved, the last and the best k."""
    names = [
        getattr(checkpoint_callback, "_last_checkpoint_saved", ""),
        getattr(checkpoint_callback, "last_model_path", ""),
        getattr(checkpoint_callback, "best_model_path", ""),
        *(getattr(checkpoint_callback, "best_k_models", None) or {}),
    ]
    paths: dict[Path, None] = {}
    for name in names:
        if name and Path(name).is_file():
            paths[Path(name).resolve()] = None  # a ``save_last="link"`` link is its target
    return list(paths)


class PhaseboardLogger(Logger):
    """Log a Lightning ``Trainer``'s metrics, hyperparameters and checkpoints to Phaseboard.

    ``name`` defaults to ``<task or "run">-<time>``; an existing run of that name is resumed.
    ``task``/``task_config`` tell workers how to rebuild the model from a checkpoint (the
    module's own network, e.g. a built-in task's model held as ``self.model``); without them
    the run holds metrics and checkpoints but runs no analyses. ``config`` is merged into the
    hyperparameters. ``log_checkpoints=False`` uploads no checkpoints. ``url``, ``token``,
    ``mode`` and ``spool_dir`` are ``phaseboard.init``'s.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        task: str | None = None,
        task_config: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        log_checkpoints: bool = True,
        url: str | None = None,
        token: str | None = None,
        mode: str = "online",
        spool_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.options = RunOptions(
            name or default_run_name(task),
            task=task,
            task_config=task_config,
            config=config,
            tags=tags,
            notes=notes,
            url=url,
            token=token,
            mode=mode,
            spool_dir=spool_dir,
        )
        self.log_checkpoints = log_checkpoints
        self._run: Run | None = None
        self._owns_run = False
        self._seen: dict[Path, float] = {}  # checkpoint file -> mtime when uploaded

    # --- Logger's interface -------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.options.name)

    @property
    def version(self) -> int | str:
        """The run's id (``offline`` while it is spooled and has none yet)."""
        run_id = getattr(self.experiment, "id", None)
        return run_id if isinstance(run_id, int) else "offline"

    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The Phaseboard run (started on first use; still the finished one after ``finalize``)."""
        return self._run if self._run is not None else self._live_run()

    def _live_run(self) -> Run:
        """The run to log into: started on first use, and again (same name) after ``finalize``."""
        if self._run is None or self._run.finished:
            o = self.options
            self._run, self._owns_run = start_run(
                o, str(o.name), o.task, o.task_config, json_safe(o.config)
            )
        return self._run

    @rank_zero_only
    def log_hyperparams(
        self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        values = vars(params) if isinstance(params, Namespace) else dict(params or {})
        if values:
            self._live_run().config.update(json_safe(values))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._live_run().log(dict(metrics), step=step)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if not self.log_checkpoints:
            return
        for path in saved_checkpoint_paths(checkpoint_callback):
            mtime = path.stat().st_mtime
            if self._seen.get(path) == mtime:
                continue
            self._seen[path] = mtime
            self._upload(path)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._run is None or self._run.finished:
            return
        if self._owns_run:
            self._run.finish(status="finished" if status == "success" else "crashed")
        else:
            self._run.flush()

    # --- checkpoints --------------------------------------------------------------------

    def _upload(self, path: Path) -> None:
        import torch

        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state_dict, step = checkpoint["state_dict"], int(checkpoint["global_step"])
        except (pickle.UnpicklingError, RuntimeError, OSError, KeyError, TypeError) as exc:
            warn(f"checkpoint {path.name} not uploaded: cannot read its weights only ({exc})")
            return
        try:
            self._live_run().log_checkpoint(step, state_dict)
        except PhaseboardClientError as exc:
            warn(f"checkpoint {path.name} (step {step}) not uploaded: {exc.short}")
