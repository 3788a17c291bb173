"""A tokenizer reaches a run on import, and the influence lens shows decoded text: a
Trainer-style folder's tokenizer.json, ``--tokenizer bytes`` for a byte vocabulary, and a
bad tokenizer.json refused (nothing stored, the texts stay token ids)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from phaseboard.server.commands.cli import app
from tests.live_server import serve
from tests.tiny_tokenizer import VOCAB, corpus, encode, gpt2_trainer_folder, tokenizer_json

runner = CliRunner()
ANALYSIS = {
    "analyses": ["influence"],  # nothing else: the test waits on this lens alone
    "llc": {"num_chains": 2, "num_draws": 6, "batch_size": 8, "lr": 1e-4, "localization": 100.0},
    "influence": {"probe_examples": 3, "train_examples": 8, "top_k": 3},
}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's console takes its width when imported (80 columns without a terminal, as
    under pytest-xdist): wide enough here that no table cell the tests read is wrapped."""
    from phaseboard.server.commands import cli

    monkeypatch.setattr(cli.console, "width", 200)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("ingest-tokenizer"), queue="local") as u:
        yield u


def _ingest(
    url: str, folder: Path, name: str, ids: list[int], *flags: str, lenses: tuple[str, ...] = ()
) -> Any:
    """Create the run with small influence settings (and ``lenses`` besides), then
    ``phaseboard ingest`` into it."""
    analysis = {**ANALYSIS, "analyses": ["influence", *lenses]}
    analysis["susceptibilities"] = {"reference_examples": 8, "observable_examples": 2}
    made = httpx.post(f"{url}/api/runs", json={"name": name, "analysis_config": analysis})
    assert made.status_code in (201, 409), made.text  # 409: a second import into it
    np.save(folder / "train.npy", np.array(ids, dtype=np.int64))
    args = ["ingest", str(folder), "--run", name, "--url", url, "--task-config",
            '{"seq_len": 16}', "--data", f"train={folder / 'train.npy'}", *flags]  # fmt: skip
    return runner.invoke(app, args, env={"COLUMNS": "200"})


def _influence(url: str, name: str, timeout: float = 180.0) -> tuple[dict[str, Any], dict]:
    run = next(r for r in httpx.get(f"{url}/api/runs").json() if r["name"] == name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = httpx.get(f"{url}/api/runs/{run['id']}/influence/data")
        if got.status_code == 200 and got.json()["steps"] == [10, 20]:
            return run, got.json()
        failed = httpx.get(f"{url}/api/jobs", params={"run_id": run["id"], "state": "failed"})
        assert not failed.json()["jobs"], failed.json()
        time.sleep(0.5)
    raise AssertionError(f"no influence result on both checkpoints of {name!r}")


def test_a_trainer_folder_tokenizer_json_makes_the_influence_texts_decoded(
    url: str, tmp_path: Path
) -> None:
    folder = gpt2_trainer_folder(tmp_path, VOCAB, tokenizer_json())
    done = _ingest(url, folder, "bpe", encode(corpus()), lenses=("susceptibilities",))
    assert done.exit_code == 0, done.output
    assert "checkpoint-20/tokenizer.json" in done.output and f"vocabulary of {VOCAB}" in done.output
    run, inf = _influence(url, "bpe")
    assert httpx.get(f"{url}/api/runs/{run['id']}/tokenizer").json()["vocab_size"] == VOCAB
    texts = inf["probe_texts"] + inf["train_texts"]
    assert len(texts) == 3 + 8
    assert all(t in corpus() for t in texts)  # byte-level BPE decodes back to the source
    assert any("def " in t or "return" in t or "import" in t for t in texts)
    # per-token items: the context decoded and the predicted token quoted
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tokens = httpx.get(f"{url}/api/runs/{run['id']}/susceptibilities/tokens")
        if tokens.status_code == 200:
            break
        time.sleep(0.5)
    items = tokens.json()["items"]
    assert items and all(" → “" in i["text"] for i in items if i["position"] < 15)
    assert not any(i["text"].replace(" ", "").replace("→", "").isdigit() for i in items)

    again = _ingest(url, folder, "bpe", encode(corpus()))
    assert again.exit_code == 0 and "already on the server" in again.output


def test_tokenizer_bytes_makes_a_byte_vocabulary_readable(url: str, tmp_path: Path) -> None:
    folder = gpt2_trainer_folder(tmp_path, 256, None)
    done = _ingest(url, folder, "bytes", list(corpus().encode()), "--tokenizer", "bytes")
    assert done.exit_code == 0, done.output
    run, inf = _influence(url, "bytes")
    assert run["task_config"]["tokenizer"] == "bytes"
    assert all(t in corpus() for t in inf["probe_texts"] + inf["train_texts"])


def test_a_bad_tokenizer_json_is_refused_and_the_texts_stay_token_ids(
    url: str, tmp_path: Path
) -> None:
    folder = gpt2_trainer_folder(tmp_path, 256, '{"model": {"type": "BPE", "vocab": 3}}')
    done = _ingest(url, folder, "bad-tok", list(corpus().encode()))
    assert done.exit_code == 1  # the import goes on, and says it failed
    out = " ".join(done.output.split())
    assert "not a usable tokenizer.json" in out and "nothing was stored" in out
    run, inf = _influence(url, "bad-tok")
    assert httpx.get(f"{url}/api/runs/{run['id']}/tokenizer").status_code == 404
    assert all(t.replace(" ", "").isdigit() for t in inf["train_texts"])
    assert inf["train_texts"][0].split() == [str(b) for b in corpus().encode()[:16]]

    # Set later, in the task config: the next influence result is text, and samples nothing
    # (the arrays do not depend on the tokenizer).
    config = {**run["task_config"], "tokenizer": "bytes"}
    assert httpx.patch(f"{url}/api/runs/{run['id']}", json={"task_config": config}).is_success
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        again = httpx.get(f"{url}/api/runs/{run['id']}/influence/data").json()
        if again["train_texts"] != inf["train_texts"]:
            break
        time.sleep(0.5)
    assert again["train_texts"][0] == corpus()[:16]
    assert again["influence"] == inf["influence"]
    results = httpx.get(f"{url}/api/runs/{run['id']}/results", params={"lens": "influence"})
    assert results.json()["results"][-1]["values"]["sampled_now"] == 0  # the newest
