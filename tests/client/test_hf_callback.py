"""``PhaseboardCallback`` in a real ``transformers.Trainer`` logging into a live server.

A GPT-2 built from a tiny config (random weights, nothing downloaded) trains a few steps on
token ids made here; the server then holds the Trainer's metrics at their steps, one
checkpoint per ``save_steps`` equal to the weights the Trainer wrote to ``checkpoint-N/``,
the run's task ``hf_causal_lm`` with the model's config, its hyperparameters and its token
data, and the run is finished.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import transformers
from safetensors.torch import load, load_file

import phaseboard
from phaseboard.integrations import PhaseboardCallback
from tests.live_server import serve

VOCAB, SEQ = 32, 16


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("hf")) as u:
        yield u


@pytest.fixture(autouse=True)
def _no_current_run() -> Iterator[None]:
    phaseboard.finish()
    yield
    phaseboard.finish()


def _tiny_gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=SEQ,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def _trainer(tmp_path: Path, model: Any, callback: Any, **args: Any) -> transformers.Trainer:
    settings: dict[str, Any] = {
        "max_steps": 6,
        "save_steps": 2,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 3,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3,
        "seed": 3,
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    training_args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), **{**settings, **args}
    )
    return transformers.Trainer(
        model=model,
        args=training_args,
        train_dataset=_Rows(_tokens(64, seed=1)),
        eval_dataset=_Rows(_tokens(16, seed=2)),
        callbacks=[callback],
    )


def _get(url: str, path: str) -> Any:
    resp = httpx.get(f"{url}/api{path}", timeout=30)
    resp.raise_for_status()
    return resp


def test_trainer_logs_metrics_checkpoints_task_and_config_then_finishes(
    url: str, tmp_path: Path
) -> None:
    train_tokens = _tokens(64, seed=1)
    callback = PhaseboardCallback("hf-trainer", url=url, datasets={"train": train_tokens})
    trainer = _trainer(tmp_path, _tiny_gpt2(), callback)
    trainer.train()

    run = callback.run
    assert run is not None and run.finished
    data = _get(url, f"/runs/{run.id}").json()
    assert data["status"] == "finished"
    assert data["task"] == "hf_causal_lm"
    hf_config = data["task_config"]["hf_config"]
    assert hf_config["model_type"] == "gpt2" and hf_config["n_layer"] == 1
    assert hf_config["architectures"] == ["GPT2LMHeadModel"]
    config = data["config"]
    assert config["learning_rate"] == 1e-3 and config["max_steps"] == 6 and config["seed"] == 3
    assert config["per_device_train_batch_size"] == 8
    assert config["num_parameters"] == trainer.model.num_parameters()
    assert "output_dir" not in config and "hub_token" not in config

    # The Trainer's own names at its global steps (as `phaseboard ingest` names them).
    loss = run.series("loss")
    assert loss["steps"] == [1, 2, 3, 4, 5, 6]
    history = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    assert loss["values"] == pytest.approx([history[s] for s in loss["steps"]])
    assert run.series("eval_loss")["steps"] == [3, 6]
    assert run.series("learning_rate")["steps"] == [1, 2, 3, 4, 5, 6]

    checkpoints = {c["step"]: c for c in run.checkpoints()}
    assert sorted(checkpoints) == [2, 4, 6]
    assert all(c["status"] == "ok" for c in checkpoints.values())
    # The uploaded weights are the ones the Trainer saved at that step.
    saved = load_file(str(tmp_path / "out" / "checkpoint-4" / "model.safetensors"))
    uploaded = load(_get(url, f"/checkpoints/{checkpoints[4]['id']}/download").content)
    for name, tensor in saved.items():
        assert torch.equal(uploaded[name], tensor), name

    (dataset,) = _get(url, f"/runs/{run.id}/datasets").json()
    assert dataset["name"] == "train"


def test_a_run_made_by_init_is_used_and_left_open_for_its_owner(url: str, tmp_path: Path) -> None:
    own = phaseboard.init(name="hf-own-run", url=url, config={"note": "mine"})
    callback = PhaseboardCallback(log_checkpoints=False)
    _trainer(tmp_path, _tiny_gpt2(), callback, eval_steps=100).train()

    assert callback.run is own
    assert not own.finished and phaseboard.run is own
    data = _get(url, f"/runs/{own.id}").json()
    assert data["status"] == "running"
    assert data["config"]["note"] == "mine" and data["config"]["max_steps"] == 6
    assert data["task"] is None  # the owner's run keeps its own (no) task
    assert own.checkpoints() == []
    assert own.series("loss")["steps"] == [1, 2, 3, 4, 5, 6]
    phaseboard.finish()
    assert _get(url, f"/runs/{own.id}").json()["status"] == "finished"


def test_a_refused_checkpoint_warns_and_training_goes_on(url: str, tmp_path: Path) -> None:
    # A task whose model does not fit a GPT-2's weights: the server refuses every checkpoint.
    callback = PhaseboardCallback("hf-misfit", url=url, task="dln", task_config={"widths": [4, 4]})
    with pytest.warns(UserWarning, match="checkpoint at step 2 not uploaded"):
        _trainer(tmp_path, _tiny_gpt2(), callback, eval_steps=100).train()
    run = callback.run
    assert run is not None and run.finished
    assert run.checkpoints() == []
    assert run.series("loss")["steps"][-1] == 6


def test_evaluate_after_training_logs_into_the_same_unnamed_run(url: str, tmp_path: Path) -> None:
    callback = PhaseboardCallback(url=url, log_checkpoints=False)  # no name: one is made
    trainer = _trainer(tmp_path, _tiny_gpt2(), callback, eval_steps=100)
    trainer.train()
    first = callback.run
    assert first is not None and first.finished and first.name.startswith("out-")
    trainer.evaluate()
    again = callback.run
    assert again is not None and again.id == first.id
    assert again.series("eval_loss")["steps"] == [6]
    phaseboard.finish()
    assert _get(url, f"/runs/{first.id}").json()["status"] == "finished"
