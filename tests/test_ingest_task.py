"""A run's task on import and after: never a silent task-less run, and a task set later is
checked against the stored checkpoints first; the import's hyperparameters become columns of
the runs table."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save, save_file
from typer.testing import CliRunner

from phaseboard import Phaseboard
from phaseboard.server.app import create_app
from phaseboard.server.commands.cli import app
from tests.live_server import serve

runner = CliRunner()
DLN = {"widths": [3, 3, 2], "num_samples": 64, "num_test": 32, "true_rank": 2}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("ingest-task")) as u:
        yield u


def _dln_weights(seed: int, widths: list[int] | None = None) -> dict[str, torch.Tensor]:
    from phaseboard.analysis.tasks import get_task

    torch.manual_seed(seed)
    return get_task("dln", {**DLN, "widths": widths or DLN["widths"]}).build_model().state_dict()


def _trainer_folder(
    root: Path, config: dict[str, Any], steps: list[int], weights: dict[str, Any] | None = None
) -> Path:
    """``checkpoint-N/`` folders with ``config.json``, weights and a ``trainer_state.json``
    whose log holds a warmup-then-decay learning rate."""
    history = [{"step": s, "loss": 5.0 / (s + 1), "learning_rate": lr}
               for s, lr in ((1, 1e-4), (5, 3e-3), (9, 1e-3))]  # fmt: skip
    for step in steps:
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(weights or {"w": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(config))
        state = {"global_step": step, "train_batch_size": 16, "max_steps": 9,
                 "log_history": [h for h in history if h["step"] <= step]}  # fmt: skip
        (folder / "trainer_state.json").write_text(json.dumps(state))
    return root


def _runs(url: str) -> dict[str, dict[str, Any]]:
    with Phaseboard(url) as pb:
        return {r["name"]: r for r in pb.request("GET", "/api/runs").json()}


def test_a_config_json_of_another_kind_of_model_and_no_task_is_refused_with_the_flag_to_add(
    url: str, tmp_path: Path
) -> None:
    bert = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 30}
    folder = _trainer_folder(tmp_path / "bert", bert, [1, 9])
    out = runner.invoke(app, ["ingest", str(folder), "--run", "bert-run", "--url", url])
    assert out.exit_code == 1
    text = " ".join(out.output.split())
    assert "BertForMaskedLM, not a causal language model" in text
    assert "--task hf_causal_lm" in text and "nothing was imported" in text
    assert "bert-run" not in _runs(url)


def test_a_causal_lm_config_without_architectures_is_known_by_its_model_type() -> None:
    from phaseboard.server.commands.ingest_dir import _is_causal_lm

    assert _is_causal_lm({"model_type": "gpt2"})  # transformers maps gpt2 to a causal LM
    assert not _is_causal_lm({"model_type": "vit"})
    assert _is_causal_lm({"model_type": "bert", "architectures": ["BertLMHeadModel"]})


def test_a_folder_without_config_json_or_task_says_nothing_will_be_analysed(
    url: str, tmp_path: Path
) -> None:
    save_file(_dln_weights(0), str(tmp_path / "step_10.safetensors"))
    out = runner.invoke(app, ["ingest", str(tmp_path), "--run", "no-task", "--url", url])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "run 'no-task' has no task" in text and "--task NAME" in text
    assert _runs(url)["no-task"]["task"] is None


def test_trainer_hyperparameters_and_model_shape_become_runs_table_columns(
    url: str, tmp_path: Path
) -> None:
    import transformers

    from phaseboard.analysis.tasks.hf_causal_lm import hf_config_from_dict

    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2,
            "n_head": 4, "n_embd": 16, "vocab_size": 64, "n_positions": 32,
            "bos_token_id": 0, "eos_token_id": 0}  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(hf_config_from_dict(gpt2))
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    folder = _trainer_folder(tmp_path / "lm", gpt2, [1, 9], weights)
    args = ["ingest", str(folder), "--run", "lm-hparams", "--url", url, "--task", "noop_free",
            "--config", "weight_decay=0.01", "--config", "seed=3",
            "--config", "optim=adamw"]  # fmt: skip
    # An unknown task is the server's refusal, not a crash; then the real import.
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "noop_free" in refused.output
    args[args.index("noop_free") - 1 : args.index("noop_free") + 1] = []
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "task hf_causal_lm" in " ".join(out.output.split())
    run = _runs(url)["lm-hparams"]
    cfg = run["config"]
    assert cfg["trainer"]["peak_learning_rate"] == 3e-3  # the schedule's peak in the log
    assert cfg["trainer"]["train_batch_size"] == 16
    assert cfg["model"] == {"type": "gpt2", "layers": 2, "heads": 4, "d_model": 16,
                            "vocab_size": 64, "context": 32}  # fmt: skip
    assert (cfg["weight_decay"], cfg["seed"], cfg["optim"]) == (0.01, 3, "adamw")
    assert run["status"] == "imported"
    with Phaseboard(url) as pb:
        page = pb.request(
            "GET", "/", params={"filter": "config.trainer.peak_learning_rate > 1e-3",
                                "group": "config.model.layers",
                                "cols": "config.trainer.peak_learning_rate,config.seed"},
        ).text  # fmt: skip
    assert "lm-hparams" in page and "no-task" not in page
    assert "config.model.layers" in page


def test_task_config_fields_are_runs_table_columns_under_config_task(url: str) -> None:
    with Phaseboard(url) as pb:
        for p in (7, 11):
            pb.request("POST", "/api/runs", json={"name": f"modadd-{p}",
                       "task": "modular_addition", "task_config": {"p": p}})  # fmt: skip
        page = pb.request("GET", "/", params={"filter": "config.task.p > 8"}).text
        grouped = pb.request("GET", "/", params={"group": "config.task.p"}).text
    assert "modadd-11" in page and "modadd-7" not in page
    assert "config.task.p" in grouped


def _upload(client: TestClient, run_id: int, step: int, weights: dict[str, torch.Tensor]) -> None:
    files = {"file": ("w.safetensors", io.BytesIO(save(weights)), "application/octet-stream")}
    r = client.post(f"/api/runs/{run_id}/checkpoints", data={"step": str(step)}, files=files)
    assert r.status_code == 201, r.text


def test_a_task_set_later_is_checked_against_the_stored_checkpoints_then_analyses_them(
    make_settings,
) -> None:
    settings = make_settings(auto_analyses="metrics")
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/api/runs", json={"name": "later"}).json()["id"]
        for step in (1, 10):
            _upload(client, run_id, step, _dln_weights(step))
        assert client.get("/api/jobs", params={"run_id": run_id}).json()["total"] == 0

        wrong = {"task": "dln", "task_config": {**DLN, "widths": [4, 3, 2]}}
        refused = client.patch(f"/api/runs/{run_id}", json=wrong)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "checkpoint at step 1 does not fit task 'dln'" in detail and "nothing" in detail
        assert client.get(f"/api/runs/{run_id}").json()["task"] is None  # unchanged

        unknown_key = client.patch(
            f"/api/runs/{run_id}", json={"task": "dln", "task_config": {"n": 6}}
        )
        assert unknown_key.status_code == 422 and "cannot build its model" in unknown_key.text

        ok = client.patch(f"/api/runs/{run_id}", json={"task": "dln", "task_config": DLN})
        assert ok.status_code == 200, ok.text
        jobs = client.get("/api/jobs", params={"run_id": run_id}).json()["jobs"]
        assert sorted(j["kind"] for j in jobs) == ["metrics", "metrics"]

        # The run page's header form takes the same path.
        form = {"task": "dln", "task_config": json.dumps({**DLN, "widths": [3, 5, 2]}),
                "tags": "", "notes": ""}  # fmt: skip
        page = client.patch(f"/runs/{run_id}/header", data=form, headers={"X-Phaseboard": "1"})
        assert page.status_code == 422 and "does not fit task 'dln'" in page.text
        assert client.get(f"/api/runs/{run_id}").json()["task_config"]["widths"] == [3, 3, 2]
