"""`phaseboard ingest hf://ORG/NAME` with no internet: a Hub cache laid out exactly as
``huggingface_hub`` writes it (``models--ORG--NAME/refs/<branch>``, ``snapshots/<commit>/``
symlinks into ``blobs/``), read in offline mode (``HF_HUB_OFFLINE=1``), in a subprocess so
the Hub library reads ``HF_HOME`` and the offline switch as a user's shell sets them.

The series has a mislabelled branch (``step100`` serves ``step300``'s weights, as 86 of
Pythia-2.8b's branches serve its final weights), a sharded revision and a non-step branch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from phaseboard.server.commands.ingest_hub import select_revisions, thin_steps
from tests.live_server import serve
from tests.server.live import free_port
from tests.tiny_tokenizer import VOCAB, tokenizer_json

REPO = "tiny-org/tiny-gpt2"


def _gpt2_files(seed: int, shard: bool = False) -> dict[str, bytes]:
    """A tiny GPT-2 saved by ``save_pretrained``: {file name: bytes}."""
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16,
                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        GPT2LMHeadModel(cfg).save_pretrained(
            d, safe_serialization=True, max_shard_size="2KB" if shard else "1GB"
        )
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def write_hub_cache(hub_cache: Path, repo: str, branches: dict[str, dict[str, bytes]]) -> None:
    """Lay out ``branches`` ({branch: {file: bytes}}) as huggingface_hub's cache does."""
    repo_dir = hub_cache / f"models--{repo.replace('/', '--')}"
    for branch, files in branches.items():
        commit = hashlib.sha1(
            branch.encode() + b"".join(files[k] for k in sorted(files))
        ).hexdigest()
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / branch).write_text(commit)  # no newline, as the library writes
        snap = repo_dir / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                blob.write_bytes(data)
            link = snap / name
            if not link.exists():
                link.symlink_to(os.path.relpath(blob, snap))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` with its size and mtime (to show nothing was written)."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    final = {**_gpt2_files(3), "tokenizer.json": tokenizer_json().encode()}
    branches = {
        "step0": _gpt2_files(0),
        "step100": final,  # mislabelled: the final weights under an early step
        "step200": _gpt2_files(2, shard=True),
        "step300": final,
        "main": final,
    }
    assert "model.safetensors.index.json" in branches["step200"]
    write_hub_cache(home / "hub", REPO, branches)
    return home


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("hub-server")) as u:
        yield u


def _ingest(url: str, hf_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("phaseboard", path=str(Path(sys.executable).parent)) or "phaseboard"
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        # Were anything fetched after all, it would fail here, not reach the internet.
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "COLUMNS": "200",
    }
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [exe, "ingest", f"hf://{REPO}", "--url", url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_offline_hub_series_imports_right_steps_flags_the_copy_and_fetches_nothing(
    url: str, hf_home: Path
) -> None:
    before = _tree(hf_home)
    done = _ingest(url, hf_home, "--run", "tiny-hub", "--revisions", "step*")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "branches from the local cache" in done.stdout
    assert "task hf_causal_lm" in done.stdout
    assert _tree(hf_home) == before  # nothing downloaded, nothing written to the cache

    run = next(r for r in httpx.get(f"{url}/api/runs").json() if r["name"] == "tiny-hub")
    assert run["task"] == "hf_causal_lm"
    assert run["task_config"]["hf_config"]["n_embd"] == 8
    ckpts = {c["step"]: c for c in httpx.get(f"{url}/api/runs/{run['id']}/checkpoints").json()}
    assert sorted(ckpts) == [0, 100, 200, 300]
    assert {s: c["duplicate_of_step"] for s, c in ckpts.items()} == {
        0: None,
        100: 300,
        200: None,
        300: None,
    }
    assert ckpts[100]["sha256"] == ckpts[300]["sha256"]
    assert "same weights as step 300" in done.stdout
    # The sharded revision arrived as one file holding every tensor.
    assert ckpts[200]["n_tensors"] == ckpts[0]["n_tensors"]
    # The last revision's tokenizer.json is the run's tokenizer.
    assert f"{REPO}@step300/tokenizer.json" in done.stdout
    tokenizer = httpx.get(f"{url}/api/runs/{run['id']}/tokenizer").json()
    assert tokenizer["vocab_size"] == VOCAB

    again = _ingest(url, hf_home, "--run", "tiny-hub", "--revisions", "step*")
    assert again.returncode == 0, again.stdout + again.stderr
    # resumable: nothing re-sent (four checkpoints and the tokenizer)
    assert again.stdout.count("already on the server") == 5


def test_offline_branch_missing_from_the_cache_is_named_not_fetched(
    url: str, hf_home: Path
) -> None:
    done = _ingest(url, hf_home, "--run", "tiny-none", "--revisions", "step9*")
    assert done.returncode == 1
    assert "no branch with a step in its name matches 'step9*'" in done.stdout


def test_revision_patterns_and_thinning() -> None:
    names = ["main", "step0", "step1", "step2", "step4", "step1000", "step2000", "v1"]
    assert select_revisions(names, "step*") == names[1:7]
    assert select_revisions(names, "step1000, main") == ["main", "step1000"]
    assert select_revisions(names, None) == names
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 144_000, 1000)]
    assert thin_steps(steps, every=50) == [0, 40_000, 90_000, 140_000, 143_000]
    picked = thin_steps(steps, max_n=8)
    assert len(picked) <= 8 and picked[0] == 0 and picked[-1] == 143_000
    ratios = [b / a for a, b in zip(picked[1:], picked[2:], strict=False)]
    assert max(ratios) / min(ratios) < 4  # roughly even in log(step)


def test_config_json_of_a_repo_is_the_run_task_config(hf_home: Path) -> None:
    repo = hf_home / "hub" / f"models--{REPO.replace('/', '--')}"
    commit = (repo / "refs" / "step300").read_text()
    config = json.loads((repo / "snapshots" / commit / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]


@pytest.fixture(scope="module")
def hub_server(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server (subprocess) whose Hub cache is ``hf_home``, offline, Hub unreachable."""
    from phaseboard.server.migrate import upgrade
    from phaseboard.server.settings import Settings
    from tests.server.live import live_server, settings_env

    root = tmp_path_factory.mktemp("hub-import")
    settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'pb.db'}",
                        storage_dir=root / "blobs", queue="none")  # fmt: skip
    upgrade(settings)
    env = {
        **settings_env(settings),
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
    }
    with live_server(env) as server:
        yield server.url


def wait_import(url: str, status_url: str, timeout: float = 120.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(url + status_url).json()
        if body["state"] != "running":
            return body
        time.sleep(0.2)
    raise AssertionError(f"import still running: {body}")


def test_hub_import_runs_in_the_background_with_progress(hub_server: str, hf_home: Path) -> None:
    before = _tree(hf_home)
    rid = httpx.post(f"{hub_server}/api/runs", json={"name": "from-the-card"}).json()["id"]
    resp = httpx.post(
        f"{hub_server}/api/runs/{rid}/imports", json={"source": REPO, "revisions": "step*"}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "running" and resp.json()["source"] == f"hf://{REPO}"
    done = wait_import(hub_server, resp.json()["status_url"])
    assert done["state"] == "done", done
    assert (done["done"], done["total"]) == (4, 4)
    assert sorted(done["imported"]) == [0, 100, 200, 300]
    assert done["duplicates"] == [{"step": 100, "of": 300}]
    steps = {c["step"]: c["duplicate_of_step"] for c in
             httpx.get(f"{hub_server}/api/runs/{rid}/checkpoints").json()}  # fmt: skip
    assert steps == {0: None, 100: 300, 200: None, 300: None}
    run = httpx.get(f"{hub_server}/api/runs/{rid}").json()
    assert run["task"] == "hf_causal_lm"
    assert _tree(hf_home) == before

    again = httpx.post(f"{hub_server}/api/runs/{rid}/imports", json={"source": f"hf://{REPO}"})
    second = wait_import(hub_server, again.json()["status_url"])
    assert second["state"] == "done" and second["imported"] == []  # resumable: all skipped
    listed = httpx.get(f"{hub_server}/api/runs/{rid}/imports").json()
    assert [i["id"] for i in listed] == [again.json()["id"], resp.json()["id"]]


@pytest.mark.parametrize(
    "body",
    [
        {"source": "not a repo"},
        {"source": "a/b/c"},
        {"source": "x/y", "max": 1},
        {"revisions": "*"},
    ],
)
def test_hub_import_refuses_bad_requests(hub_server: str, body: dict) -> None:
    rid = httpx.post(f"{hub_server}/api/runs", json={"name": f"bad-{len(str(body))}"}).json()
    rid = rid.get("id") or httpx.get(f"{hub_server}/api/runs").json()[0]["id"]
    resp = httpx.post(f"{hub_server}/api/runs/{rid}/imports", json=body)
    assert resp.status_code == 422 and resp.json()["error"] == "bad_input"


def test_hub_import_of_a_missing_series_fails_as_a_state(hub_server: str) -> None:
    rid = httpx.post(f"{hub_server}/api/runs", json={"name": "missing"}).json()["id"]
    resp = httpx.post(f"{hub_server}/api/runs/{rid}/imports", json={"source": "nobody/nothing"})
    done = wait_import(hub_server, resp.json()["status_url"])
    assert done["state"] == "failed" and "no branch" in done["message"]
    assert httpx.get(f"{hub_server}/api/imports/999").status_code == 404
