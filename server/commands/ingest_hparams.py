"""Hyperparameters of an imported training directory, for the run's ``config``.

Two sources, both read without executing anything:

- TensorBoard's hparams plugin (``SummaryWriter.add_hparams``, Lightning's hparams logging):
  the ``session_start_info`` record in any event file under the directory.
- Hugging Face ``trainer_state.json`` (in the directory or its ``checkpoint-*`` folders):
  its top-level scalar settings (``train_batch_size``, ``num_train_epochs``, ``max_steps``,
  ``logging_steps``, ``eval_steps``, ``save_steps``, ...) under ``config["trainer"]``, with
  ``peak_learning_rate``: the largest learning rate in its log (the schedule's peak, as far
  as the log caught it). ``training_args.bin`` is a pickle and is never read, so weight decay
  and seed come only from what the user adds (``phaseboard ingest --config KEY=VALUE``).

And from the model's ``config.json`` (``model_summary``): its architecture as
``config["model"]`` (type, layers, heads, width, vocabulary, context), so runs of different
sizes can be filtered and grouped in the runs table.

The log history of ``trainer_state.json`` is series, not config: ``server.commands.ingest_dir``
imports it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["model_summary", "read_hparams", "read_tensorboard_hparams", "read_trainer_state_config"]

# config.json keys of the architecture, by the name a researcher filters on (first found).
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "type": ("model_type",),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "d_mlp": ("intermediate_size", "n_inner", "d_mlp"),
    "vocab_size": ("vocab_size", "d_vocab"),
    "context": ("max_position_embeddings", "n_positions", "n_ctx"),
}


def read_tensorboard_hparams(root: Path) -> dict[str, Any]:
    """``{name: value}`` from TensorBoard hparams records under ``root`` (last one wins)."""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out: dict[str, Any] = {}
    dirs = sorted({p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()})
    for d in dirs:
        acc = plugin_event_accumulator.EventAccumulator(str(d))
        acc.Reload()
        try:
            contents = acc.PluginTagToContent("hparams")
        except KeyError:
            continue
        for content in contents.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if not data.HasField("session_start_info"):
                continue
            for name, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                if kind == "number_value":
                    v: Any = value.number_value
                    out[name] = int(v) if float(v).is_integer() and abs(v) < 2**53 else v
                elif kind == "string_value":
                    out[name] = value.string_value
                elif kind == "bool_value":
                    out[name] = value.bool_value
    return out


def read_trainer_state_config(root: Path) -> dict[str, Any]:
    """Top-level scalar settings of the newest ``trainer_state.json`` under ``root``."""
    states = sorted(root.rglob("trainer_state.json"), key=lambda p: (len(p.parts), str(p)))
    best: dict[str, Any] | None = None
    for path in states:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and (
            best is None or state.get("global_step", 0) >= best.get("global_step", 0)
        ):
            best = state
    if best is None:
        return {}
    skip = {"log_history", "global_step", "epoch", "total_flos", "trial_name", "trial_params"}
    keep = {
        k: v
        for k, v in best.items()
        if k not in skip and not k.startswith("best_") and isinstance(v, int | float | str | bool)
    }
    rates = [
        float(e["learning_rate"])
        for e in best.get("log_history") or []
        if isinstance(e, dict)
        and isinstance(e.get("learning_rate"), int | float)
        and not isinstance(e.get("learning_rate"), bool)
    ]
    if rates:
        keep["peak_learning_rate"] = max(rates)
    return {"trainer": keep} if keep else {}


def model_summary(hf_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"model": {type, layers, heads, d_model, d_mlp, vocab_size, context}}`` from a
    Hugging Face ``config.json`` (the keys it has), or {} without one."""
    if not hf_config:
        return {}
    out: dict[str, Any] = {}
    for name, keys in MODEL_FIELDS.items():
        for key in keys:
            value = hf_config.get(key)
            if isinstance(value, int | float | str) and not isinstance(value, bool):
                out[name] = value
                break
    return {"model": out} if out else {}


def read_hparams(root: Path) -> dict[str, Any]:
    """The run config an import should carry; a broken file gives {} rather than failing."""
    config: dict[str, Any] = {}
    with contextlib.suppress(Exception):  # a broken event file must not sink the import
        config.update(read_tensorboard_hparams(root))
    config.update(read_trainer_state_config(root))
    return config
