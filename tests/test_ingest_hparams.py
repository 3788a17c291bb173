"""Hyperparameters of imported directories land in the run's config, not in its series."""

from __future__ import annotations

import json
from pathlib import Path

from phaseboard.server.commands.ingest_hparams import read_hparams


def test_tensorboard_hparams_and_trainer_state_settings_become_config(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb")) as w:
        w.add_hparams({"lr": 3e-4, "optimizer": "adamw", "layers": 2, "ln": True}, {"m/acc": 0.9})
    ckpt = tmp_path / "checkpoint-100"
    ckpt.mkdir()
    state = {
        "global_step": 100,
        "train_batch_size": 16,
        "num_train_epochs": 3,
        "logging_steps": 10,
        "log_history": [{"loss": 1.0, "step": 10}],
        "best_metric": None,
    }
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    config = read_hparams(tmp_path)
    assert config["lr"] == 3e-4 and config["optimizer"] == "adamw"
    assert config["layers"] == 2 and config["ln"] == 1  # torch writes bools as numbers
    assert config["trainer"] == {"train_batch_size": 16, "num_train_epochs": 3, "logging_steps": 10}


def test_a_directory_without_hparams_gives_an_empty_config(tmp_path: Path) -> None:
    (tmp_path / "events.out.tfevents.broken").write_bytes(b"\x00garbage")
    assert read_hparams(tmp_path) == {}
