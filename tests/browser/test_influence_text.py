"""The influence view of a token task whose run carries a tokenizer: training examples are
listed as decoded text (a tiny GPT-2 imported from a Trainer folder with a tokenizer.json
trained on Python's own source), at desktop and phone widths."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from rich.console import Console

from phaseboard import Phaseboard
from phaseboard.server.commands.ingest_dir import ingest_directory
from tests.browser.conftest import ARTIFACTS, PHONE
from tests.live_server import serve
from tests.tiny_tokenizer import VOCAB, corpus, encode, gpt2_trainer_folder, tokenizer_json

pytestmark = pytest.mark.browser

ANALYSIS = {
    "analyses": ["influence"],
    "llc": {"num_chains": 2, "num_draws": 10, "batch_size": 8, "lr": 1e-4, "localization": 100.0},
    "influence": {"probe_examples": 6, "train_examples": 24, "top_k": 4},
}


@pytest.fixture(scope="module")
def decoded_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("influence-text")
    folder = gpt2_trainer_folder(tmp_path_factory.mktemp("trainer"), VOCAB, tokenizer_json())
    np.save(folder / "train.npy", np.array(encode(corpus()), dtype=np.int64))
    with serve(home, queue="local") as url, Phaseboard(url) as pb:
        pb.request("POST", "/api/runs", json={"name": "py-bpe", "analysis_config": ANALYSIS})
        report = ingest_directory(
            folder, "py-bpe", pb, task_config={"seq_len": 32}, console=Console(quiet=True),
            data={"train": folder / "train.npy"},
        )  # fmt: skip
        assert report.failed == 0, [(i.path, i.detail) for i in report.items]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            got = httpx.get(f"{url}/api/runs/{report.run_id}/influence/data")
            if got.status_code == 200 and got.json()["steps"] == [10, 20]:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no influence result on both checkpoints")
        yield {"url": url, "run_id": report.run_id}


def test_influence_lists_decoded_training_text_at_desktop_and_phone_widths(
    decoded_run, page, browser
) -> None:  # type: ignore[no-untyped-def]
    url, run_id = decoded_run["url"], decoded_run["run_id"]
    page.goto(f"{url}/runs/{run_id}?iprobe=1")
    page.wait_for_selector("#plot-inf-series .main-svg", timeout=30_000)
    rows = page.locator("#inf-most tbody tr td:first-child")
    assert rows.count() == 4
    texts = [rows.nth(i).inner_text() for i in range(4)]
    assert all(not t.replace(" ", "").isdigit() for t in texts), texts  # not token ids
    flat = " ".join(corpus().split())
    assert all(" ".join(t.split()) in flat for t in texts), texts  # the source, decoded
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#inf-view").screenshot(path=str(ARTIFACTS / "influence-text-1280.png"))
    phone = browser.new_context(viewport=PHONE).new_page()
    try:
        phone.goto(f"{url}/runs/{run_id}?iprobe=1")
        phone.wait_for_selector("#plot-inf-series .main-svg", timeout=30_000)
        overflow = phone.evaluate(
            "() => [...document.querySelectorAll('#inf-view, #inf-view *')]"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
            ".map(e => e.id || e.className || e.tagName).slice(0, 5)"
        )
        assert overflow == [], overflow
        phone.locator("#inf-view").screenshot(path=str(ARTIFACTS / "influence-text-390.png"))
    finally:
        phone.context.close()
