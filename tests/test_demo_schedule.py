"""The demo's checkpoint schedule and what `phaseboard demo --no-serve` prints."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from phaseboard.analysis.tasks.base import log_spaced_steps
from phaseboard.server.commands.cli import app
from phaseboard.server.commands.demo import FULL_CONFIG, QUICK_CONFIG, checkpoint_schedule


@pytest.mark.parametrize("config", [FULL_CONFIG, QUICK_CONFIG])
def test_demo_schedule_has_exactly_the_configured_unique_steps(config: dict) -> None:
    steps = checkpoint_schedule(config)
    assert len(steps) == config["num_checkpoints"] == len(set(steps))
    assert steps[0] == 0 and steps[-1] == config["steps"] and steps == sorted(steps)
    # No near-duplicates (like 172/188 or 1688/1693 before): each gap past the first few
    # steps is at least 5% of the step it leads to.
    gaps = [(b - a) / b for a, b in zip(steps, steps[1:], strict=False) if b >= 50]
    assert min(gaps) >= 0.05, list(zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize(("total", "count"), [(10_000, 40), (3000, 32), (20, 5), (7, 7), (1, 2)])
def test_log_spaced_steps_are_exactly_count_unique_and_span_the_run(total: int, count: int) -> None:
    steps = log_spaced_steps(total, count)
    assert len(steps) == count == len(set(steps))
    assert steps[0] == 0 and steps[-1] == total and steps == sorted(steps)


def test_log_spaced_steps_cannot_exceed_the_steps_there_are() -> None:
    assert log_spaced_steps(4, 10) == [0, 1, 2, 3, 4]
    assert log_spaced_steps(0, 5) == [0]


@pytest.mark.slow
def test_demo_no_serve_prints_no_link_to_the_server_it_stopped(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {"PHASEBOARD_HOME": str(tmp_path), "PHASEBOARD_AUTO_ANALYSES": ""}
    result = CliRunner().invoke(
        app, ["demo", "--quick", "--no-serve", "--url", url, "--name", "d"], env=env
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "phaseboard up" in text and "resume" in text
    assert not re.search(r"https?://127\.0\.0\.1:\d+/runs", text), text
