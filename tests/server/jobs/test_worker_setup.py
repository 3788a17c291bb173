"""A worker process's set-up: the sampler is warmed up in the background, on every device
the pool serves, and a device that cannot run it only leaves a warning (its jobs will say
why they fail)."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from phaseboard.server.db import Database
from phaseboard.server.jobs.local import LocalQueue
from phaseboard.server.jobs.worker_setup import start_warm_up
from phaseboard.server.storage import BlobStore
from tests.server.jobs.conftest import fast_settings


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "phaseboard.jobs"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_local_pool_warms_the_sampler_up_while_its_workers_wait(
    make_settings, caplog, tmp_path
) -> None:
    caplog.set_level(logging.INFO, logger="phaseboard.jobs")
    settings = fast_settings(make_settings, queue="local", worker_devices="cpu")
    queue = LocalQueue(settings, Database(settings), BlobStore(tmp_path / "blobs"))
    queue.start()
    try:
        deadline = time.monotonic() + 120
        while not any(m.startswith("sampler warmed up on cpu") for m in _messages(caplog)):
            assert time.monotonic() < deadline, _messages(caplog)
            time.sleep(0.1)
    finally:
        queue.stop()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a device this machine lacks")
def test_a_device_that_cannot_warm_up_leaves_a_warning_and_the_others_warm(caplog) -> None:
    caplog.set_level(logging.INFO, logger="phaseboard.jobs")
    thread = start_warm_up(["cuda:0", "cpu", "cpu"])
    thread.join(timeout=120)
    assert not thread.is_alive()
    messages = _messages(caplog)
    assert "warming up the sampler on cuda:0 failed" in messages
    assert sum(m.startswith("sampler warmed up on cpu") for m in messages) == 1  # once per device
