"""The client's local spool: what a run logged while the server was away, and its upload.

A spool is one directory per run::

    run.json          name, task, task_config, tags, notes, analysis_config, config, run_id
    metrics.jsonl     one point per line: {"step", "name", "value", "wall_time"}
    checkpoints/      <step>.safetensors (written to a temp name, then renamed)
    finish.json       {"status": "finished" | "crashed"} once the script ended
    sync.json         upload progress: run_id, metrics_offset, checkpoint steps, finished

``sync_spool`` uploads it **exactly once**: progress is saved after every accepted batch
(``metrics_offset`` is the byte offset of the first line not yet accepted), a lock file keeps
a second syncer (``phaseboard sync`` while the client itself reconnects) out, and a spool whose
``sync.json`` says ``complete`` is left alone. A batch re-sent after a crash between the POST and
the saved offset is harmless: points are upserted on (run, name, step).

It talks HTTP only through the client (``_points.post_points``); it never imports the server.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._points import post_points

if TYPE_CHECKING:
    from ._client import Phaseboard

__all__ = ["Spool", "SyncResult", "find_spools", "sync_spool"]

BATCH = 5000
DEFAULT_ROOT = Path("~/.phaseboard/spool")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, sort_keys=True).encode())


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


class Spool:
    """One run's spool directory (create with ``Spool.create``, open with ``Spool(path)``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, root: Path | None, meta: dict[str, Any]) -> Spool:
        root = Path(root or DEFAULT_ROOT).expanduser()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(meta.get("name", "run")))[:60] or "run"
        path = root / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        (path / "checkpoints").mkdir(parents=True)
        spool = cls(path)
        spool.write_meta(meta)
        return spool

    # --- writing (the training process) -----------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        return _read_json(self.path / "run.json", {})

    def write_meta(self, meta: dict[str, Any]) -> None:
        _write_json(self.path / "run.json", meta)

    def update_meta(self, **changes: Any) -> None:
        self.write_meta({**self.meta, **changes})

    def append_points(self, points: list[dict[str, Any]]) -> None:
        if not points:
            return
        lines = "".join(json.dumps(p, separators=(",", ":")) + "\n" for p in points)
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()

    def add_checkpoint(self, step: int, write: Callable[[Any], None]) -> Path:
        """Write a checkpoint with ``write(fileobj)``; it appears under its name only when done."""
        final = self.path / "checkpoints" / f"{int(step)}.safetensors"
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        with tmp.open("wb") as f:
            write(f)
        os.replace(tmp, final)
        return final

    def mark_finished(self, status: str = "finished") -> None:
        _write_json(self.path / "finish.json", {"status": status})

    # --- reading (the syncer) ---------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        return _read_json(self.path / "sync.json", {})

    def save_state(self, state: dict[str, Any]) -> None:
        _write_json(self.path / "sync.json", state)

    @property
    def finished(self) -> dict[str, Any] | None:
        return _read_json(self.path / "finish.json", None)

    def checkpoint_steps(self) -> list[int]:
        out = []
        for p in (self.path / "checkpoints").glob("*.safetensors"):
            if p.stem.isdigit():
                out.append(int(p.stem))
        return sorted(out)

    def read_points(self, offset: int, limit: int = BATCH) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` complete lines from byte ``offset``; returns them and the new offset."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return [], offset
        points: list[dict[str, Any]] = []
        with path.open("rb") as f:
            f.seek(offset)
            while len(points) < limit:
                line = f.readline()
                if not line.endswith(b"\n"):  # end of file, or a line still being written
                    break
                offset += len(line)
                try:
                    point = json.loads(line)
                except ValueError:
                    continue  # a torn line cannot be sent; skip it
                if isinstance(point, dict):
                    points.append(point)
        return points, offset

    def pending_bytes(self) -> int:
        path = self.path / "metrics.jsonl"
        size = path.stat().st_size if path.exists() else 0
        return size - int(self.state.get("metrics_offset", 0))

    @property
    def complete(self) -> bool:
        return bool(self.state.get("complete"))

    # --- the lock -----------------------------------------------------------------------

    def try_lock(self) -> bool:
        """Take the sync lock; a lock left by a dead process is broken."""
        lock = self.path / ".sync.lock"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(lock.read_text() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    return False
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return True
        return False

    def unlock(self) -> None:
        (self.path / ".sync.lock").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class SyncResult:
    """What one ``sync_spool`` call did."""

    path: Path
    run_id: int | None = None
    points: int = 0
    checkpoints: int = 0
    dropped: list[str] = field(default_factory=list)
    complete: bool = False
    skipped: str = ""  # why nothing was done (already synced, locked)


def find_spools(path: Path) -> list[Spool]:
    """``path`` itself when it is a spool, else every spool directly under it."""
    path = Path(path).expanduser()
    if (path / "run.json").exists():
        return [Spool(path)]
    if not path.is_dir():
        return []
    return [Spool(p) for p in sorted(path.iterdir()) if (p / "run.json").exists()]


def sync_spool(client: Phaseboard, spool: Spool) -> SyncResult:
    """Upload what the spool holds and the server has not accepted yet (see module doc).

    Network problems and refusals of the run itself raise ``PhaseboardClientError`` with the
    progress so far saved; a point the server refuses is dropped (``SyncResult.dropped``).
    """
    result = SyncResult(spool.path)
    if spool.complete:
        result.run_id, result.complete, result.skipped = spool.state.get("run_id"), True, "synced"
        return result
    if not spool.try_lock():
        result.skipped = "another process is syncing it"
        return result
    try:
        _sync_locked(client, spool, result)
    finally:
        spool.unlock()
    return result


def _sync_locked(client: Phaseboard, spool: Spool, result: SyncResult) -> None:

    state = spool.state
    meta = spool.meta
    run_id = state.get("run_id") or meta.get("run_id")
    if run_id is None:
        data = client.ensure_run(meta)
        run_id = int(data["id"])
        state["run_id"] = run_id
        spool.update_meta(run_id=run_id)
        spool.save_state(state)
    result.run_id = run_id
    if meta.get("config") and state.get("config") != meta["config"]:
        client.request("PATCH", f"/api/runs/{run_id}", json={"config": meta["config"]})
        state["config"] = meta["config"]
        spool.save_state(state)

    offset = int(state.get("metrics_offset", 0))
    while True:
        points, new_offset = spool.read_points(offset)
        if not points and new_offset == offset:
            break
        result.dropped += post_points(client, run_id, points)
        result.points += len(points)
        offset = state["metrics_offset"] = new_offset
        spool.save_state(state)

    done = set(state.get("checkpoints", []))
    for step in spool.checkpoint_steps():
        if step in done:
            continue
        path = spool.path / "checkpoints" / f"{step}.safetensors"
        with path.open("rb") as f:
            client.request(
                "POST",
                f"/api/runs/{run_id}/checkpoints",
                files={"file": (path.name, f, "application/octet-stream")},
                data={"step": str(step)},
                ok=[409],
                rewind=f,
            )
        done.add(step)
        state["checkpoints"] = sorted(done)
        spool.save_state(state)
        result.checkpoints += 1

    finished = spool.finished
    if finished is not None:
        if meta.get("status") != "imported":
            status = finished.get("status", "finished")
            client.request("POST", f"/api/runs/{run_id}/finish", json={"status": status})
        state["complete"] = result.complete = True
        spool.save_state(state)


def iter_lines(spool: Spool) -> Iterator[dict[str, Any]]:
    """Every point in the spool (for tests and inspection)."""
    offset = 0
    while True:
        points, offset2 = spool.read_points(offset)
        if offset2 == offset:
            return
        yield from points
        offset = offset2
