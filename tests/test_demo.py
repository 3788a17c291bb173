"""`phaseboard demo --quick` end to end against a real server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from phaseboard import Phaseboard
from phaseboard.server.commands.cli import app
from phaseboard.server.commands.demo import start_server
from phaseboard.server.settings import Settings
from tests.live_server import serve

pytestmark = pytest.mark.slow


def test_quick_demo_logs_a_grokking_run_and_queues_analyses(tmp_path: Path) -> None:
    # A queue that records jobs without running them keeps this test to the demo's own work.
    with serve(tmp_path, queue="local", start_workers=False) as url:
        result = CliRunner().invoke(app, ["demo", "--quick", "--url", url, "--name", "demo"])
        assert result.exit_code == 0, result.output
        with Phaseboard(url) as pb:
            run = pb.run("demo")
            assert run.url in " ".join(result.output.split())
            assert run.data["task"] == "modular_addition"
            assert len(run.checkpoints()) >= 8

            train = run.series("train_acc")
            test = run.series("test_acc")
            memorised = next(
                s for s, v in zip(train["steps"], train["values"], strict=True) if v > 0.99
            )
            grokked = next(s for s, v in zip(test["steps"], test["values"], strict=True) if v > 0.9)
            assert memorised < grokked, "train accuracy must saturate before test accuracy"
            assert test["values"][-1] > 0.9

            kinds = {j["kind"] for j in run.jobs()["jobs"]}
            assert {"metrics", "llc", "llc_restricted"} <= kinds
            # The run-level lenses too, or the demo's page waits for them forever.
            assert {"essential_dynamics", "learning_order"} <= kinds


def test_demo_starts_a_local_server_when_none_answers(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(url, Settings(home=tmp_path, queue="none"), Console(quiet=True))
    try:
        assert Phaseboard(url).ping()
        assert (tmp_path / "phaseboard.db").exists()
        proc.terminate()
        proc.wait(timeout=15)
        assert "No runs yet" in (tmp_path / "demo-server.log").read_text()  # `up` offers the demo
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_empty_store_is_detected_for_the_up_hint(tmp_path: Path) -> None:
    from phaseboard.server.commands.demo import store_is_empty
    from phaseboard.server.migrate import upgrade

    settings = Settings(home=tmp_path)
    upgrade(settings)
    assert store_is_empty(settings)
    with serve(tmp_path) as url, Phaseboard(url) as pb:
        pb.run("one")
    assert not store_is_empty(settings)
