"""A researcher's own small model, analysed by a fresh `phaseboard up`: how long, how much memory.

The recipe (also used by ``tests/test_own_model.py``, smaller): a GPT-2 of 120,576 parameters
(2 layers, 4 heads, d_model 64, context 64, a byte vocabulary of 256) trained with
``transformers.Trainer`` on real text, the Python standard library's own source (``Lib/*.py``
of the running interpreter, as bytes), saving log-spaced ``checkpoint-N/`` folders exactly as
the Trainer leaves them (``model.safetensors``, ``config.json``, ``trainer_state.json``), plus
``train.npy`` / ``test.npy`` byte-token files; the same for a GPT-NeoX and a Llama of that size
(``--family``). Then, against a fresh `phaseboard up` (a subprocess, SQLite, the local worker
pool, the server's defaults):

    phaseboard ingest DIR --run NAME --data train=train.npy --data test=test.npy

with no LLC settings of the run's own, so the server calibrates first and queues every
default lens (restricted LLCs included) with the calibrated settings. Printed: ingest time,
time from the end of ingest until every analysis is done (target < 10 minutes on the 2-core
CPU machine), peak resident memory of the server and its worker processes together, sampled
every 0.5 s (target < 2 GB), LLC verdict counts, failed jobs (target 0), the calibration's
recommendation, and the machine's load average (the machine is shared; say so with figures).

    .venv/bin/python bench/own_model.py                      # GPT-2, 26 checkpoints
    .venv/bin/python bench/own_model.py --family gpt_neox
    .venv/bin/python bench/own_model.py --family all --keep /tmp/own   # all three, keep folders
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAMILIES = ("gpt2", "gpt_neox", "llama")
VOCAB = 256  # bytes
CONTEXT = 64


def model_config(family: str, context: int = CONTEXT) -> dict[str, Any]:
    """The Hugging Face config of the issue's model size for ``family`` (about 120k params:
    the GPT-2 has 120,576 at a context of 64)."""
    common = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0}
    if family == "gpt2":
        return {"model_type": "gpt2", "n_positions": context, "n_embd": 64, "n_layer": 2,
                "n_head": 4, "architectures": ["GPT2LMHeadModel"], **common}  # fmt: skip
    if family == "gpt_neox":
        return {"model_type": "gpt_neox", "max_position_embeddings": context, "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 192,
                "architectures": ["GPTNeoXForCausalLM"], **common}  # fmt: skip
    if family == "llama":
        return {"model_type": "llama", "max_position_embeddings": context, "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                "intermediate_size": 192, "architectures": ["LlamaForCausalLM"],
                **common}  # fmt: skip
    raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")


def stdlib_bytes(limit: int) -> bytes:
    """Up to ``limit`` bytes of the running interpreter's ``Lib/*.py``, files in name order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for path in sorted(lib.glob("*.py")):
        out += path.read_bytes() + b"\n"
        if len(out) >= limit:
            break
    return bytes(out[:limit])


def log_steps(last: int, count: int) -> list[int]:
    """``count`` distinct steps from 1 to ``last``, log-spaced (the first few are 1, 2, 3)."""
    steps: set[int] = set()
    k = count
    while len(steps) < count and k < 10 * count:
        steps = {max(1, round(10 ** (i * math.log10(last) / (k - 1)))) for i in range(k)}
        k += 1
    return sorted(steps)[-count:] if len(steps) >= count else sorted(steps)


@dataclass
class Case:
    family: str
    folder: Path  # checkpoint-N/ folders
    train: Path  # token files
    test: Path
    steps: list[int]
    params: int
    train_s: float
    final_loss: float


def build_case(
    family: str,
    out: Path,
    *,
    max_steps: int = 2000,
    checkpoints: int = 26,
    batch_size: int = 16,
    train_bytes: int = 400_000,
    test_bytes: int = 40_000,
    learning_rate: float = 3e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    shape: dict[str, Any] | None = None,
    context: int = CONTEXT,
) -> Case:
    """Train ``family`` with ``transformers.Trainer`` on stdlib text; ``checkpoints``
    log-spaced ``checkpoint-N/`` folders (the last at ``max_steps``) under ``out/run``.
    A folder built before with the same arguments (``out/case.json``) is reused."""
    import numpy as np
    import torch
    import transformers

    from phaseboard.analysis.tasks.hf_causal_lm import hf_config_from_dict

    recipe = {"family": family, "max_steps": max_steps, "checkpoints": checkpoints,
              "batch_size": batch_size, "train_bytes": train_bytes, "test_bytes": test_bytes,
              "learning_rate": learning_rate, "weight_decay": weight_decay,
              "seed": seed}  # fmt: skip
    if shape or context != CONTEXT:
        recipe.update(shape=shape, context=context)
    saved = out / "case.json"
    if saved.is_file():
        data = json.loads(saved.read_text())
        if data.get("recipe") == recipe:
            return Case(**{**data["case"], "folder": Path(data["case"]["folder"]),
                           "train": Path(data["case"]["train"]),
                           "test": Path(data["case"]["test"])})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    data = np.frombuffer(stdlib_bytes(train_bytes + test_bytes), dtype=np.uint8).astype(np.int32)
    train_tokens, test_tokens = data[:train_bytes], data[train_bytes:]
    np.save(out / "train.npy", train_tokens)
    np.save(out / "test.npy", test_tokens)

    torch.manual_seed(seed)
    config = hf_config_from_dict({**model_config(family, context), **(shape or {})})
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    params = sum(p.numel() for p in model.parameters())

    windows = torch.from_numpy(train_tokens[: len(train_tokens) // context * context].copy())
    windows = windows.long().view(-1, context)
    test_windows = torch.from_numpy(test_tokens[: len(test_tokens) // context * context].copy())
    test_windows = test_windows.long().view(-1, context)[:64]

    class Windows(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self, rows: Any) -> None:
            self.rows = rows

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": self.rows[i], "labels": self.rows[i]}

    save_at = set(log_steps(max_steps, checkpoints - 1))  # plus checkpoint-0, the init

    class SaveLogSpaced(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if state.global_step in save_at:
                control.should_save = True
                control.should_log = True
                control.should_evaluate = True
            return control

    run_dir = out / "run"
    args = transformers.TrainingArguments(
        output_dir=str(run_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_steps=max(1, max_steps // 50),
        lr_scheduler_type="cosine",
        seed=seed,
        save_strategy="no",  # the callback saves at log-spaced steps
        save_only_model=True,
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Windows(windows),
        eval_dataset=Windows(test_windows),
        callbacks=[SaveLogSpaced()],
    )
    # checkpoint-0: the initial weights, as a Trainer folder (Trainer saves none at step 0).
    init = run_dir / "checkpoint-0"
    model.save_pretrained(init)
    (init / "trainer_state.json").write_text(json.dumps({"global_step": 0, "log_history": []}))
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    final = trainer.evaluate()
    case = Case(
        family=family,
        folder=run_dir,
        train=out / "train.npy",
        test=out / "test.npy",
        steps=[0, *sorted(save_at)],
        params=params,
        train_s=train_s,
        final_loss=float(final.get("eval_loss", float("nan"))),
    )
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in case.__dict__.items()}
    saved.write_text(json.dumps({"recipe": recipe, "case": fields}))
    return case


# --- the server side ------------------------------------------------------------------------


def phaseboard_cli() -> list[str]:
    """The ``phaseboard`` console script of this interpreter's environment."""
    return [str(Path(sys.executable).parent / "phaseboard")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every descendant (the server and its worker processes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class PeakRSS:
    """Samples ``tree_rss(pid)`` every ``every_s`` in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __enter__(self) -> PeakRSS:
        self.peak = tree_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def phaseboard_up(home: Path, env: dict[str, str] | None = None) -> Any:
    """A fresh `phaseboard up` (its own home, SQLite, local pool) on a free port: (url, pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "PHASEBOARD_HOME": str(home), **(env or {})}
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [*phaseboard_cli(), "up", "--host", "127.0.0.1", "--port", str(port)],
        env=full_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"phaseboard up exited ({proc.returncode}); see {log.name}")
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"phaseboard up did not answer in 120 s; see {log.name}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Outcome:
    run_id: int
    ingest_s: float
    analyses_s: float  # from the end of ingest until no job is queued, waiting or running
    peak_rss: int
    jobs: Counter[str] = field(default_factory=Counter)  # state -> count
    kinds: Counter[str] = field(default_factory=Counter)  # lens -> done jobs
    verdicts: Counter[str] = field(default_factory=Counter)  # whole-model LLC
    restricted_verdicts: Counter[str] = field(default_factory=Counter)
    llc_points: int = 0
    checkpoints: int = 0
    failed: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    timed_out: bool = False


def ingest_and_wait(url: str, pid: int, case: Case, name: str, timeout_s: float) -> Outcome:
    """`phaseboard ingest` the case into the server at ``url``, then wait for every job."""
    import httpx

    env = {**os.environ, "PHASEBOARD_URL": url}
    with PeakRSS(pid) as rss:
        t0 = time.monotonic()
        subprocess.run(
            [*phaseboard_cli(), "ingest", str(case.folder), "--run", name, "--url", url,
             "--data", f"train={case.train}", "--data", f"test={case.test}",
             "--tokenizer", "bytes"],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        ingest_s = time.monotonic() - t0
        client = httpx.Client(base_url=url, timeout=30)
        run_id = next(r["id"] for r in client.get("/api/runs").json() if r["name"] == name)
        t1 = time.monotonic()
        timed_out = False
        while True:
            jobs = client.get("/api/jobs", params={"run_id": run_id, "limit": 5000}).json()
            active = sum(jobs["counts"].get(s, 0) for s in ("queued", "running", "waiting"))
            if jobs["total"] and not active:
                break
            if time.monotonic() - t1 > timeout_s:
                timed_out = True
                break
            time.sleep(1.0)
        analyses_s = time.monotonic() - t1
    out = Outcome(run_id, ingest_s, analyses_s, rss.peak, timed_out=timed_out)
    for j in jobs["jobs"]:
        out.jobs[j["state"]] += 1
        if j["state"] == "done":
            out.kinds[j["kind"]] += 1
        if j["state"] == "failed":
            out.failed.append(f"#{j['id']} {j['kind']}: {(j.get('error') or '')[:200]}")
    llc = client.get(f"/api/runs/{run_id}/llc").json()["points"]
    for p in llc:
        if p["verdict"] is not None:
            out.verdicts[p["verdict"]] += 1
            out.llc_points += 1
        for r in p["restrictions"].values():
            out.restricted_verdicts[r["verdict"] or "?"] += 1
    out.checkpoints = len(client.get(f"/api/runs/{run_id}/checkpoints").json())
    cal = client.get(f"/api/runs/{run_id}/calibration").json().get("calibration")
    out.calibration = None if cal is None else {"recommended": cal.get("recommended"),
                                                 "reason": cal.get("reason")}  # fmt: skip
    client.close()
    return out


def report(case: Case, out: Outcome) -> str:
    load = os.getloadavg()
    lines = [
        f"## {case.family}: {case.params:,} parameters, {len(case.steps)} checkpoints "
        f"(steps {case.steps[0]}..{case.steps[-1]}), trained in {case.train_s:.0f} s, "
        f"final test loss {case.final_loss:.3f} nats",
        f"ingest: {out.ingest_s:.1f} s",
        f"every analysis done {out.analyses_s:.0f} s after ingest"
        + (" (TIMED OUT)" if out.timed_out else "")
        + f" (target < 600 s): {'met' if out.analyses_s < 600 and not out.timed_out else 'MISSED'}",
        f"peak RSS, server + workers: {out.peak_rss / 2**30:.2f} GB (target < 2 GB): "
        + ("met" if out.peak_rss < 2 * 2**30 else "MISSED"),
        f"jobs: {dict(out.jobs)}; done per lens: {dict(out.kinds)}",
        f"failed jobs: {len(out.failed)}" + "".join(f"\n  {f}" for f in out.failed),
        f"LLC points: {out.llc_points} of {out.checkpoints} checkpoints; verdicts "
        f"{dict(out.verdicts)}",
        f"restricted LLC verdicts: {dict(out.restricted_verdicts)}",
        f"calibration: {json.dumps(out.calibration)}",
        f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"({os.cpu_count()} CPUs)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="gpt2", choices=[*FAMILIES, "all"])
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--checkpoints", type=int, default=26)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for jobs")
    parser.add_argument("--keep", type=Path, default=None, help="keep the folders here")
    args = parser.parse_args()
    families = FAMILIES if args.family == "all" else (args.family,)
    base = args.keep or Path(tempfile.mkdtemp(prefix="pb-own-"))
    for family in families:
        case_dir = base / family
        print(f"training {family} ({args.steps} steps, {args.checkpoints} checkpoints) ...")
        case = build_case(family, case_dir, max_steps=args.steps, checkpoints=args.checkpoints)
        home = Path(tempfile.mkdtemp(prefix="home-", dir=case_dir))  # a fresh server each time
        with phaseboard_up(home) as (url, pid):
            out = ingest_and_wait(url, pid, case, f"own-{family}", args.timeout)
        print(report(case, out), flush=True)


if __name__ == "__main__":
    main()
