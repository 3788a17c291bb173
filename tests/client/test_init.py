"""``phaseboard.init`` and the module-level API (wandb's shape) against a real server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

import phaseboard
from phaseboard import Phaseboard, PhaseboardClientError
from tests.live_server import serve

TOKEN = "init-token"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("init")) as u:
        yield u


@pytest.fixture(scope="module")
def token_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("init-token"), token=TOKEN) as u:
        yield u


@pytest.fixture(autouse=True)
def _no_current_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without a current run and without the client's env variables."""
    monkeypatch.delenv("PHASEBOARD_URL", raising=False)
    monkeypatch.delenv("PHASEBOARD_API_TOKEN", raising=False)
    phaseboard.finish()
    yield
    phaseboard.finish()


def _run(url: str, run_id: int) -> dict:
    return httpx.get(f"{url}/api/runs/{run_id}", timeout=10).json()


def test_init_log_checkpoint_finish_round_trip_through_the_module_functions(url: str) -> None:
    run = phaseboard.init(
        name="init-round-trip",
        task="dln",
        task_config={"widths": [4, 4]},
        config={"lr": 0.01, "optimizer": {"name": "sgd"}},
        url=url,
    )
    assert phaseboard.run is run
    model = torch.nn.Sequential()
    model.add_module("layers", torch.nn.ModuleList([torch.nn.Linear(4, 4, bias=False)]))
    for step in range(5):
        phaseboard.log({"train": {"loss": 1.0 / (step + 1)}}, step=step)
    phaseboard.log_checkpoint(4, model)
    phaseboard.finish()

    assert phaseboard.run is None
    assert run.finished
    data = _run(url, run.id)
    assert data["status"] == "finished"
    assert data["task"] == "dln"
    assert data["config"] == {"lr": 0.01, "optimizer": {"name": "sgd"}}
    assert data["summary"]["train/loss"]["last_step"] == 4
    assert [c["step"] for c in run.checkpoints()] == [4]


def test_module_functions_without_a_run_name_the_fix() -> None:
    assert phaseboard.run is None
    with pytest.raises(PhaseboardClientError, match=r"call phaseboard.init\(\) first"):
        phaseboard.log({"loss": 1.0})
    with pytest.raises(PhaseboardClientError, match=r"phaseboard.log_checkpoint\(\) needs a run"):
        phaseboard.log_checkpoint(0, torch.nn.Linear(2, 2))
    phaseboard.finish()  # nothing to finish: no error


def test_a_second_init_finishes_the_first_and_becomes_current(url: str) -> None:
    first = phaseboard.init(name="init-first", url=url)
    second = phaseboard.init(name="init-second", url=url)
    assert first.finished and not second.finished
    assert phaseboard.run is second
    assert _run(url, first.id)["status"] == "finished"
    assert _run(url, second.id)["status"] == "running"
    second.finish()
    assert phaseboard.run is None  # a run finished by its own finish() is no longer current


def test_init_with_an_existing_name_resumes_after_its_last_step(url: str) -> None:
    with phaseboard.init(name="init-resume", url=url) as run:
        run.log({"x": 1.0})
        run.log({"x": 2.0})
    again = phaseboard.init(name="init-resume", url=url)
    assert again.id == run.id
    assert again.step == 2
    phaseboard.finish()


def test_init_without_a_name_makes_a_new_run_each_time(url: str) -> None:
    a = phaseboard.init(task="dln", url=url)
    b = phaseboard.init(task="dln", url=url)
    phaseboard.finish()
    assert a.id != b.id
    assert a.name.startswith("dln-") and b.name.startswith("dln-")


def test_url_and_token_default_from_the_environment(
    token_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHASEBOARD_URL", token_url + "/")
    monkeypatch.setenv("PHASEBOARD_API_TOKEN", TOKEN)
    run = phaseboard.init(name="init-env")
    assert run.client.url == token_url
    run.log({"x": 1.0}, step=0)
    phaseboard.finish()
    assert _run(token_url, run.id)["summary"]["x"]["last"] == 1.0

    explicit = Phaseboard(token="")  # "" opts out of the environment's token
    assert explicit.url == token_url and explicit.token is None
    with pytest.raises(PhaseboardClientError) as err:
        explicit.run("init-env-no-token")
    assert err.value.status_code == 401
    explicit.close()


def test_a_refused_init_raises_before_training_and_leaves_no_current_run(url: str) -> None:
    with pytest.raises(PhaseboardClientError) as err:
        phaseboard.init(name="init-bad-task", task="no_such_task", url=url)
    assert err.value.status_code == 422
    assert phaseboard.run is None


def test_init_spools_when_the_server_is_away(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.warns(UserWarning, match="cannot reach"):
        run = phaseboard.init(
            name="init-offline", url=dead, spool_dir=tmp_path / "spool", task="dln"
        )
    assert run.spooled and run.id is None
    phaseboard.log({"loss": 0.5}, step=3)
    with pytest.warns(UserWarning, match="phaseboard sync"):
        phaseboard.finish()
    (spool,) = phaseboard.find_spools(tmp_path / "spool")
    assert spool.meta["name"] == "init-offline" and spool.meta["task"] == "dln"
    assert spool.finished == {"status": "finished"}


def test_phaseboard_sync_defaults_to_the_clients_url(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from phaseboard.server.commands.cli import app as cli

    offline = phaseboard.init(name="init-sync-env", mode="offline", spool_dir=tmp_path)
    offline.log({"loss": 0.25}, step=2)
    with pytest.warns(UserWarning, match="phaseboard sync"):
        phaseboard.finish()
    monkeypatch.setenv("PHASEBOARD_URL", url)
    result = CliRunner().invoke(cli, ["sync", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{url}/runs/" in result.output
    (found,) = Phaseboard(url).runs(q="init-sync-env")
    assert found["summary"]["loss"]["last"] == 0.25 and found["status"] == "finished"
