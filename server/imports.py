"""Background imports started from the browser: "import from the Hub" on a run's upload card.

An import is ``phaseboard ingest hf://ORG/NAME`` run in a thread of the API process: it
downloads each revision into the server's Hub cache (``HF_HOME``, ``HF_TOKEN`` of the
server) and uploads it through the server's own HTTP API on loopback, so it is checked,
stored, deduplicated and flagged exactly as the command line's uploads are. Its progress
lives in memory (``ImportTask``); it is not a lens and writes no job rows. An interrupted
import (a restart) is resumed by starting it again: steps already stored are skipped before
anything is downloaded.
"""

from __future__ import annotations

import io
import itertools
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from phaseboard.server.errors import Conflict, NotFound

__all__ = ["ImportTask", "Imports"]

log = logging.getLogger(__name__)
MAX_RUNNING = 2  # imports at once per API process (each downloads and uploads)


@dataclass
class ImportTask:
    """One background import and how far it got."""

    id: int
    run_id: int
    source: str
    revisions: str | None
    state: str = "running"  # running | done | failed
    done: int = 0
    total: int = 0
    message: str = "listing revisions"
    imported: list[int] = field(default_factory=list)
    duplicates: dict[int, int] = field(default_factory=dict)  # step -> step with its weights
    failed: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def out(self) -> dict[str, Any]:
        body = asdict(self)
        body["duplicates"] = [{"step": s, "of": o} for s, o in sorted(self.duplicates.items())]
        return body


class Imports:
    """The API process's imports, by id (kept in memory for the process's lifetime)."""

    def __init__(self) -> None:
        self._tasks: dict[int, ImportTask] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def get(self, import_id: int) -> ImportTask:
        task = self._tasks.get(import_id)
        if task is None:
            raise NotFound(f"import {import_id} does not exist (imports are kept until a restart)")
        return task

    def for_run(self, run_id: int) -> list[ImportTask]:
        return [t for t in self._tasks.values() if t.run_id == run_id]

    def start(
        self,
        *,
        run_id: int,
        run_name: str,
        source: str,
        revisions: str | None,
        every: int | None,
        max_n: int | None,
        server_url: str,
        token: str | None,
    ) -> ImportTask:
        with self._lock:
            running = [t for t in self._tasks.values() if t.state == "running"]
            if any(t.run_id == run_id for t in running):
                raise Conflict(f"run {run_id} already has an import running; wait for it")
            if len(running) >= MAX_RUNNING:
                raise Conflict(f"{len(running)} imports are running; start this one later")
            task = ImportTask(next(self._ids), run_id, source, revisions)
            self._tasks[task.id] = task
        thread = threading.Thread(
            target=self._work,
            args=(task, run_name, every, max_n, server_url, token),
            name=f"phaseboard-import-{task.id}",
            daemon=True,
        )
        thread.start()
        return task

    def _work(
        self,
        task: ImportTask,
        run_name: str,
        every: int | None,
        max_n: int | None,
        server_url: str,
        token: str | None,
    ) -> None:
        from rich.console import Console

        from phaseboard import Phaseboard, PhaseboardClientError
        from phaseboard.server.commands.ingest_dir import Item
        from phaseboard.server.commands.ingest_hub import ingest_hub

        def progress(done: int, total: int, item: Item) -> None:
            task.done, task.total = done, total
            task.message = f"step {item.step}: {item.status}" + (
                f" ({item.detail})" if item.detail else ""
            )

        console = Console(file=io.StringIO(), width=120)  # the command line's output, unused
        try:
            with Phaseboard(server_url, token=token, max_retries=2) as client:
                report = ingest_hub(
                    task.source,
                    run_name,
                    client,
                    revisions=task.revisions,
                    every=every,
                    max_n=max_n,
                    console=console,
                    on_progress=progress,
                )
        except (PhaseboardClientError, OSError) as exc:
            task.state, task.message = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - a thread's error must reach the page
            log.exception("import %s failed", task.id)
            task.state, task.message = "failed", f"{type(exc).__name__}: {exc}"
        else:
            ckpts = [i for i in report.items if i.kind == "checkpoint"]
            task.imported = [
                int(i.step) for i in ckpts if i.status == "imported" and i.step is not None
            ]
            task.failed = [f"{i.path}: {i.detail}" for i in ckpts if i.status == "failed"]
            for item in ckpts:
                found = re_duplicate(item.detail)
                if found is not None and item.step is not None:
                    task.duplicates[int(item.step)] = found
            skipped = sum(i.status == "skipped" for i in ckpts)
            task.state = "failed" if task.failed and not task.imported else "done"
            task.message = (
                f"{len(task.imported)} imported, {skipped} skipped, {len(task.failed)} failed"
            )
        task.finished_at = time.time()


def re_duplicate(detail: str) -> int | None:
    """The step named by a summary's "same weights as step N", if any."""
    import re

    m = re.search(r"same weights as step (\d+)", detail or "")
    return int(m.group(1)) if m else None
