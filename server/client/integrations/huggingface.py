"""``PhaseboardCallback``: a Hugging Face ``Trainer`` logs its run to Phaseboard.

    from phaseboard.integrations import PhaseboardCallback

    trainer = Trainer(model, args, train_dataset=...,
                      callbacks=[PhaseboardCallback(datasets={"train": token_ids})])
    trainer.train()

At ``on_train_begin`` the callback starts a run (or joins the one ``phaseboard.init`` made):
its name is ``args.run_name`` (else made from ``output_dir`` and the time), its hyperparameters
the ``TrainingArguments`` that shape training (learning rate, batch size, steps, optimizer,
schedule, seed, ...) plus the model's parameter count, and, when the model is a causal LM,
its task ``hf_causal_lm`` with the model's config, so workers can rebuild it. ``datasets``
(token ids, e.g. ``{"train": (N, T) ids}``) are uploaded then, before any checkpoint, for the
analyses queued on upload. Every ``on_log`` sends the Trainer's numbers under the Trainer's own
names (``loss``, ``learning_rate``, ``grad_norm``, ``eval_loss``, ...: the names ``phaseboard
ingest`` gives a ``trainer_state.json``) at ``state.global_step``; every ``on_save`` uploads the
in-memory model's weights at that step (the same weights the Trainer just wrote to
``checkpoint-N/``). ``on_train_end`` finishes a run the callback started; a run made by
``phaseboard.init`` stays open for its owner. Only the main process logs.

The callback never raises into training: a refused checkpoint or dataset is a warning, and a
server that goes away is the client's business (it spools and uploads later).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._client import Run
from .._points import PhaseboardClientError
from .._session import default_run_name
from ._common import RunOptions, is_number, json_safe, start_run, warn

__all__ = ["PhaseboardCallback", "causal_lm_task", "training_hyperparameters"]

# TrainingArguments that shape the optimisation (kept when present in this transformers
# version); output paths, logging, hub and hardware settings are not hyperparameters.
HYPERPARAMETERS = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "label_smoothing_factor",
    "seed",
    "bf16",
    "fp16",
)


def training_hyperparameters(args: Any) -> dict[str, Any]:
    """The optimisation settings of ``TrainingArguments`` as a flat JSON dict."""
    values = args.to_dict() if hasattr(args, "to_dict") else dict(vars(args))
    return {k: json_safe(values[k]) for k in HYPERPARAMETERS if values.get(k) is not None}


def _is_causal_lm(model: Any) -> bool:
    """A ``transformers`` causal LM (``...ForCausalLM`` / ``...LMHeadModel``, as ``ingest``
    decides from a ``config.json``'s ``architectures``)."""
    names = [type(model).__name__, *(getattr(model.config, "architectures", None) or [])]
    return any(str(n).endswith(("ForCausalLM", "LMHeadModel")) for n in names)


def causal_lm_task(model: Any) -> tuple[str, dict[str, Any]] | None:
    """``("hf_causal_lm", {"hf_config": ...})`` for a causal LM, else None.

    The config is the model's ``config.json`` as ``save_pretrained`` writes it, so a run
    logged live and one ingested from the Trainer's ``checkpoint-N/`` folders agree.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string") or not _is_causal_lm(model):
        return None
    hf_config = json.loads(config.to_json_string())
    if not hf_config.get("architectures"):  # as save_pretrained records it
        hf_config["architectures"] = [type(model).__name__]
    return "hf_causal_lm", {"hf_config": hf_config}


class PhaseboardCallback(TrainerCallback):
    """Log a ``transformers.Trainer``'s metrics and saved checkpoints to Phaseboard.

    ``name`` defaults to ``args.run_name`` (else ``<output_dir>-<time>``); an existing run of
    that name is resumed. ``task``/``task_config`` default to ``hf_causal_lm`` with the
    model's config for a causal LM (give them for another model, or leave the run without a
    task: metrics only). ``config`` is merged over the hyperparameters read from
    ``TrainingArguments``. ``datasets`` maps dataset names (``train``, ``test``, subsets) to
    token ids, uploaded once at the start. ``log_checkpoints=False`` logs metrics only.
    ``url``, ``token``, ``mode`` and ``spool_dir`` are ``phaseboard.init``'s.
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
        datasets: Mapping[str, Any] | None = None,
        log_checkpoints: bool = True,
        url: str | None = None,
        token: str | None = None,
        mode: str = "online",
        spool_dir: str | Path | None = None,
    ) -> None:
        self.options = RunOptions(
            name,
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
        self.datasets = dict(datasets or {})
        self.log_checkpoints = log_checkpoints
        self.run: Run | None = None
        self._owns_run = False
        self._datasets_sent = False

    # --- the run ------------------------------------------------------------------------

    def _run_name(self, args: Any) -> str:
        """The name given, else ``args.run_name``, else one made once (a later
        ``trainer.evaluate()`` logs into the same run)."""
        if not self.options.name:
            run_name = getattr(args, "run_name", None)
            if run_name and run_name != getattr(args, "output_dir", None):
                return str(run_name)
            output_dir = Path(str(getattr(args, "output_dir", "") or "run")).name
            self.options.name = default_run_name(output_dir)
        return self.options.name

    def _task(self, model: Any) -> tuple[str | None, dict[str, Any] | None]:
        task, task_config = self.options.task, self.options.task_config
        found = causal_lm_task(model) if model is not None else None
        if task is None and found is not None:
            return found
        if task == "hf_causal_lm" and found is not None and "hf_config" not in (task_config or {}):
            task_config = {**found[1], **(task_config or {})}
        return task, task_config

    def _setup(self, args: Any, model: Any) -> Run:
        if self.run is not None and not self.run.finished:
            return self.run
        task, task_config = self._task(model)
        config = training_hyperparameters(args)
        if model is not None and hasattr(model, "num_parameters"):
            config["num_parameters"] = int(model.num_parameters())
        config.update(json_safe(self.options.config))
        self.run, self._owns_run = start_run(
            self.options, self._run_name(args), task, task_config, config
        )
        self._send_datasets(self.run)
        return self.run

    def _send_datasets(self, run: Run) -> None:
        if self._datasets_sent or not self.datasets:
            return
        self._datasets_sent = True
        if run.spooled:
            warn(
                f"run {run.name!r} is offline: datasets {sorted(self.datasets)} not uploaded; "
                "upload them with run.log_dataset() once it is online"
            )
            return
        for name, tokens in self.datasets.items():
            try:
                run.log_dataset(name, tokens)
            except PhaseboardClientError as exc:
                warn(f"dataset {name!r} not uploaded: {exc.short}")

    # --- Trainer events -----------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._setup(args, kwargs.get("model"))

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        run = self._setup(args, kwargs.get("model"))
        numbers = {k: v for k, v in logs.items() if is_number(v)}
        if numbers:
            run.log(numbers, step=int(state.global_step))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if not state.is_world_process_zero or not self.log_checkpoints or model is None:
            return
        run = self._setup(args, model)
        try:
            run.log_checkpoint(int(state.global_step), model)
        except PhaseboardClientError as exc:
            warn(f"checkpoint at step {state.global_step} not uploaded: {exc.short}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.run is None:
            return
        if self._owns_run:
            self.run.finish()
        else:
            self.run.flush()
