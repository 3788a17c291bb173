"""``PhaseboardLogger`` in a real Lightning ``Trainer`` logging into a live server.

A LightningModule holds the built-in ``dln`` task's network as ``self.model`` and trains it a
few CPU steps on the task's data; the server then holds the logged metrics at Lightning's
steps, the hyperparameters, one checkpoint per ``ModelCheckpoint`` save (weights only, the
``model.`` prefix stripped onto the task's names), and the run's final status.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import phaseboard
from phaseboard.analysis.tasks import get_task
from phaseboard.integrations import PhaseboardLogger
from tests.live_server import serve

TASK_CONFIG = {"widths": [4, 4, 4], "true_rank": 2, "num_samples": 64, "num_test": 16}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("lightning")) as u:
        yield u


@pytest.fixture(autouse=True)
def _no_current_run() -> Iterator[None]:
    phaseboard.finish()
    yield
    phaseboard.finish()


class DLNModule(pl.LightningModule):
    def __init__(self, lr: float = 0.05, fail_at: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task = get_task("dln", TASK_CONFIG)
        torch.manual_seed(0)
        self.model = self.task.build_model()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.hparams.fail_at is not None and self.global_step == self.hparams.fail_at:
            raise RuntimeError("diverged")
        loss = self.task.loss(self.model, batch)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _fit(tmp_path: Path, logger: PhaseboardLogger, module: DLNModule) -> ModelCheckpoint:
    x, y = module.task.full_batch("train")
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=logger,
        callbacks=[checkpoints],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    return checkpoints


def _run(url: str, run_id: int) -> dict[str, Any]:
    return httpx.get(f"{url}/api/runs/{run_id}", timeout=30).json()


def test_fit_logs_metrics_hyperparameters_and_checkpoints_then_finishes(
    url: str, tmp_path: Path
) -> None:
    logger = PhaseboardLogger(
        "lightning-dln", url=url, task="dln", task_config=TASK_CONFIG, config={"note": "x"}
    )
    module = DLNModule(lr=0.05)
    _fit(tmp_path, logger, module)

    run = logger.experiment
    assert run.finished and logger.version == run.id
    data = _run(url, run.id)
    assert data["status"] == "finished"
    assert data["task"] == "dln"
    assert data["config"]["lr"] == 0.05 and data["config"]["note"] == "x"

    loss = run.series("train/loss")
    assert loss["steps"] == [0, 1, 2, 3, 4, 5]
    assert all(v > 0 for v in loss["values"])

    checkpoints = {c["step"]: c for c in run.checkpoints()}
    assert sorted(checkpoints) == [2, 4, 6]
    assert checkpoints[6]["key_mapping"]["strip_prefix"] == "model."
    assert checkpoints[6]["n_params"] == sum(p.numel() for p in module.model.parameters())


def test_a_failed_fit_marks_the_run_crashed(url: str, tmp_path: Path) -> None:
    logger = PhaseboardLogger("lightning-crash", url=url, task="dln", task_config=TASK_CONFIG)
    run = logger.experiment
    with pytest.raises(RuntimeError, match="diverged"):
        _fit(tmp_path, logger, DLNModule(fail_at=3))
    assert run.finished
    assert _run(url, run.id)["status"] == "crashed"
    assert run.series("train/loss")["steps"] == [0, 1, 2]
    assert [c["step"] for c in run.checkpoints()] == [2]


def test_logging_after_finalize_reopens_the_same_run(url: str, tmp_path: Path) -> None:
    logger = PhaseboardLogger("lightning-reopen", url=url)
    logger.log_metrics({"val/loss": 1.0}, step=0)
    first = logger.experiment
    logger.finalize("success")
    assert _run(url, first.id)["status"] == "finished"
    assert logger.experiment is first  # reading it does not reopen the run
    logger.log_metrics({"test/loss": 2.0}, step=7)  # e.g. trainer.test() after fit
    again = logger.experiment
    assert again is not first and again.id == first.id
    logger.finalize("success")
    assert again.series("test/loss")["steps"] == [7]
    assert _run(url, first.id)["status"] == "finished"
