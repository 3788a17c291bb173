"""A small HTTP client for training loops, shaped like ``wandb.log`` / ``mlflow.log_metric``.

    from phaseboard import Phaseboard

    pb = Phaseboard("http://127.0.0.1:8765", token=None)
    with pb.run("grokking-p53", task="modular_addition", task_config={"p": 53},
                config={"lr": 1e-3, "optimizer": {"name": "adamw"}}) as run:
        for step in range(steps):
            ...
            run.log({"train": {"loss": loss.item()}})   # auto step; saved as "train/loss"
            if step in checkpoint_steps:
                run.log_checkpoint(step, model)
        run.analyze(["metrics", "llc"])
    print(run.url, run.summary["train/loss"]["min"])

``log`` only appends to an in-memory buffer; a background thread posts it in batches, so a
slow server never stalls training. A point the server refuses (a NUL in its name, say) is
dropped with a warning; the rest of its batch is kept (the batch is split until the bad point
is found) and a 4xx is never retried. **The client never raises into the training loop for a
network problem**: when the server is down at ``pb.run()`` or goes away later, it warns once
and writes everything (points, checkpoints, config, the finish) to a local spool directory
(``phaseboard._spool``); once the server answers again the client uploads the spool itself,
exactly once, and carries on online. ``mode="offline"`` only spools; upload later with
``phaseboard sync DIR``. A heartbeat thread keeps the run ``running`` on the server;
``finish()`` (or leaving the ``with`` block, or interpreter exit) marks it ``finished``, a
``with`` block left by an exception marks it ``crashed``.

Steps: ``run.log(metrics)`` logs at the run's current step and then advances it by one (as in
wandb); ``run.log(metrics, step=s)`` (or the older ``run.log(s, metrics)``) logs at ``s`` and
moves the current step to ``max(current, s + 1)``, so auto steps always continue after the
largest explicit step. A run found again by name resumes after its largest logged step.
"""

from __future__ import annotations

import atexit
import contextlib
import html
import math
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import quote

import httpx

from ._env import resolve_token, resolve_url
from ._points import (
    PhaseboardClientError,
    _bad_name,
    _error_from_response,
    flatten_metrics,
    post_points,
)
from ._spool import Spool, sync_spool

__all__ = [
    "Phaseboard",
    "PhaseboardClientError",
    "Run",
    "RunConfig",
    "flatten_metrics",
    "post_points",
    "state_dict_to_safetensors",
]

_RETRY_STATUS = {500, 502, 503, 504}
_MAX_BUFFERED = 2_000_000  # metric points held in memory before they go to the spool
_SPOOL_BYTES = 64 * 1024 * 1024  # checkpoints larger than this are serialised to disk
_MAX_STEP = 2**53 - 1
_BATCH = 5000

Mode = Literal["online", "offline"]


def state_dict_to_safetensors(model_or_state_dict: Any, out: IO[bytes]) -> None:
    """Write a module's (or a state_dict's) tensors to ``out`` in safetensors format.

    Tensors are detached, moved to the CPU and made contiguous; tensors sharing storage
    (tied weights) are copied so safetensors accepts them.
    """
    import torch
    from safetensors.torch import save, save_file

    sd = (
        model_or_state_dict.state_dict()
        if hasattr(model_or_state_dict, "state_dict")
        else model_or_state_dict
    )
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected an nn.Module or a state_dict, got {type(sd).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. extra state; safetensors only holds tensors
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -len(tensors) - 1
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        tensors[str(name)] = t
    if not tensors:
        raise ValueError("the state_dict holds no tensors")
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if nbytes <= _SPOOL_BYTES:
        out.write(save(tensors))
        return
    with tempfile.TemporaryDirectory(prefix="phaseboard-") as tmp:
        path = Path(tmp) / "ckpt.safetensors"
        save_file(tensors, str(path))
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                out.write(chunk)


class Phaseboard:
    """A connection to one Phaseboard server.

    ``url`` defaults to ``PHASEBOARD_URL``, else the local server; ``token`` (needed when the
    server sets ``PHASEBOARD_API_TOKEN``) defaults to ``PHASEBOARD_API_TOKEN``, ``""`` for
    none. ``flush_every`` points or ``flush_interval_s`` seconds, whichever comes first,
    trigger a metrics batch. ``mode="offline"`` never contacts the server (runs
    are spooled under ``spool_dir``, default ``~/.phaseboard/spool``); ``heartbeat_s`` is the
    run heartbeat period and ``reconnect_s`` how often an unreachable server is tried again.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        flush_every: int = 500,
        flush_interval_s: float = 2.0,
        transport: httpx.BaseTransport | None = None,
        mode: Mode = "online",
        spool_dir: str | Path | None = None,
        heartbeat_s: float = 15.0,
        reconnect_s: float = 10.0,
    ) -> None:
        if mode not in ("online", "offline"):
            raise ValueError(f"mode must be 'online' or 'offline', not {mode!r}")
        self.mode: Mode = mode
        self.spool_dir = Path(spool_dir).expanduser() if spool_dir else None
        self.heartbeat_s = heartbeat_s
        self.reconnect_s = reconnect_s
        self.url = resolve_url(url)
        self.token = resolve_token(token)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            transport=transport,
        )
        self._runs: weakref.WeakSet[Run] = weakref.WeakSet()
        atexit.register(self._at_exit)

    # --- plumbing -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: Iterable[int] = (),
        rewind: IO[bytes] | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying connection errors and 5xx answers with backoff.

        Returns the response when it is 2xx or its status is in ``ok``; raises
        ``PhaseboardClientError`` with the server's message otherwise. ``rewind`` is a file
        object sent in the body, seeked back to 0 before every attempt.
        """
        allowed = set(ok)
        what = f"{method} {path}"
        delay = self.backoff_s
        tries = self.max_retries if retries is None else retries
        for attempt in range(tries + 1):
            last = attempt == tries
            if rewind is not None:
                rewind.seek(0)
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise PhaseboardClientError(
                        f"{what}: cannot reach {self.url} ({type(exc).__name__}: {exc})"
                    ) from exc
            else:
                if resp.is_success or resp.status_code in allowed:
                    return resp
                if resp.status_code not in _RETRY_STATUS or last:
                    raise _error_from_response(resp, what)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/api/health").json()

    def ping(self, timeout_s: float = 2.0) -> bool:
        """True when the server answers its health check (no retries)."""
        try:
            return self._http.get("/api/health", timeout=timeout_s).is_success
        except httpx.HTTPError:
            return False

    # --- runs ---------------------------------------------------------------------------

    def runs(self, q: str | None = None) -> list[dict[str, Any]]:
        params = {"q": q} if q else None
        body = self.request("GET", "/api/runs", params=params).json()
        if isinstance(body, dict):  # tolerate a paginated envelope
            body = body.get("items", body.get("runs", []))
        return list(body)

    def find_run(self, name_or_id: str | int) -> dict[str, Any] | None:
        """The run with exactly this name, else (for a number) with this id, or None."""
        found = self._find_by_name(str(name_or_id))
        if found is None and str(name_or_id).isdigit():
            resp = self.request("GET", f"/api/runs/{int(name_or_id)}", ok=[404])
            found = resp.json() if resp.status_code == 200 else None
        return found

    def _find_by_name(self, name: str) -> dict[str, Any] | None:
        for run in self.runs(q=name):
            if run.get("name") == name.strip():
                return run
        return None

    def run(
        self,
        name: str,
        task: str | None = None,
        task_config: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        analysis_config: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        status: Literal["running", "imported"] = "running",
    ) -> Run:
        """Get the run called ``name``, creating it if it does not exist yet.

        An existing run keeps its task; fields it lacks (task, task config, tags, notes) are
        filled in from the arguments and ``config`` is merged into its config. When the
        server cannot be reached (or ``mode="offline"``) the run is spooled locally and
        uploaded later; a refusal (bad token, unknown task) still raises here, before
        training starts. ``status="imported"`` is for importers: no heartbeat, no finish.
        """
        meta: dict[str, Any] = {"name": name, "status": status}
        for key, value in (
            ("task", task),
            ("task_config", dict(task_config) if task_config is not None else None),
            ("tags", tags),
            ("notes", notes),
            ("analysis_config", dict(analysis_config) if analysis_config is not None else None),
            ("config", dict(config) if config is not None else None),
        ):
            if value is not None:
                meta[key] = value
        data: dict[str, Any] | None = None
        if self.mode == "online" and self.ping(timeout_s=5.0):
            try:
                data = self.ensure_run(meta, stacklevel=3)
            except PhaseboardClientError as exc:
                if exc.status_code is not None:
                    raise  # refused (bad token, unknown task): tell the user before training
        if data is None:
            if self.mode == "online":
                warnings.warn(
                    f"phaseboard: cannot reach {self.url}; run {name!r} is spooled to disk "
                    "and uploaded when the server answers (training goes on)",
                    stacklevel=2,
                )
            run = Run(self, {"id": None, "name": name, "config": meta.get("config") or {}})
            run._start_spooling(meta)
        else:
            run = Run(self, data)
        run._track = status != "imported"  # the caller's intent, not the run's old status
        self._runs.add(run)
        run._start()
        return run

    def ensure_run(self, meta: Mapping[str, Any], stacklevel: int = 2) -> dict[str, Any]:
        """Get or create the run described by ``meta`` (``run()``'s fields); its record."""
        name = str(meta["name"])
        body = {k: v for k, v in meta.items() if k not in ("run_id", "status") and v is not None}
        if meta.get("status") in ("running", "imported"):
            body["status"] = meta["status"]
        data = self._find_by_name(name)
        if data is None:
            resp = self.request("POST", "/api/runs", json=body, ok=[409])
            data = resp.json() if resp.status_code != 409 else self._find_by_name(name)
            if data is None:
                raise _error_from_response(resp, "POST /api/runs")
            return data
        task = meta.get("task")
        if task is not None and data.get("task") not in (None, task):
            warnings.warn(
                f"phaseboard: run {name!r} already has task {data['task']!r}; keeping it",
                stacklevel=stacklevel,
            )
        patch = {
            k: v
            for k, v in body.items()
            if k not in ("name", "config", "status") and not data.get(k)
        }
        if body.get("config"):
            merged = {**(data.get("config") or {}), **body["config"]}
            if merged != data.get("config"):
                patch["config"] = merged
        if patch:
            data = self.request("PATCH", f"/api/runs/{data['id']}", json=patch).json()
        return data

    def close(self) -> None:
        """Finish every open run and close the connection pool."""
        for run in list(self._runs):
            run.finish()
        self._http.close()

    def _at_exit(self) -> None:
        for run in list(self._runs):
            try:
                run.finish(timeout_s=30.0)
            except Exception as exc:  # noqa: BLE001 - never raise from an atexit hook
                warnings.warn(f"phaseboard: could not flush run {run.name!r}: {exc}", stacklevel=1)

    def __enter__(self) -> Phaseboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunConfig(dict[str, Any]):
    """``run.config``: a dict of hyperparameters; ``update``/item assignment save it."""

    def __init__(self, run: Run, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self._run = run

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)
        self._run._save_config()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._run._save_config()


class Run:
    """One run: buffered ``log``, ``log_checkpoint``, ``config``, ``summary``, ``analyze``.

    ``id`` is None while a run that was created offline has not reached the server yet.
    """

    def __init__(self, client: Phaseboard, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data
        self.id: int | None = int(data["id"]) if data.get("id") is not None else None
        self.name: str = str(data["name"])
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._sending = False
        self._closed = False
        self._error: PhaseboardClientError | None = None
        self._warned: set[str] = set()
        self._uploaded_steps: set[int] = set()
        self._thread: threading.Thread | None = None
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self._spool_lock = threading.RLock()  # checkpoint/config writes vs. the spool upload
        self._spool: Spool | None = None
        self._next_sync = 0.0
        self._local_summary: dict[str, dict[str, Any]] = {}
        self._step = 1 + max(
            (int(v.get("last_step", -1)) for v in (data.get("summary") or {}).values()),
            default=-1,
        )
        self._config = RunConfig(self, data.get("config") or {})
        self._track = data.get("status") != "imported"
        self.points_sent = 0

    def __repr__(self) -> str:
        return f"Run(id={self.id}, name={self.name!r}, url={self.url!r})"

    def _repr_html_(self) -> str:
        """A link and a small status line for notebooks."""
        state = "offline (spooled)" if self.spooled else "online"
        if self._closed:
            state = "finished"
        where = f" · spool <code>{html.escape(str(self.spool_path))}</code>" if self.spooled else ""
        return (
            f'<div class="phaseboard-run">Phaseboard run <a href="{html.escape(self.url)}" '
            f'target="_blank">{html.escape(self.name)}</a> · {state} · step {self._step}'
            f"{where}</div>"
        )

    @property
    def url(self) -> str:
        """The run page in the dashboard (the runs list while the run is not uploaded yet)."""
        if self.id is None:
            return f"{self.client.url}/?q={quote(self.name)}"
        return f"{self.client.url}/runs/{self.id}"

    @property
    def finished(self) -> bool:
        """True once ``finish()`` ran (``log`` then refuses)."""
        return self._closed

    @property
    def spooled(self) -> bool:
        """True while this run writes to its local spool instead of the server."""
        return self._spool is not None

    @property
    def spool_path(self) -> Path | None:
        return self._spool.path if self._spool is not None else None

    @property
    def step(self) -> int:
        """The step the next ``log(metrics)`` without a step will use."""
        return self._step

    # --- config and summary -------------------------------------------------------------

    @property
    def config(self) -> RunConfig:
        return self._config

    @config.setter
    def config(self, value: Mapping[str, Any]) -> None:
        self._config = RunConfig(self, value)
        self._save_config()

    def _save_config(self) -> None:
        body = dict(self._config)
        with self._spool_lock:
            if self._spool is not None:
                self._spool.update_meta(config=body)
                return
        if self.id is None:
            return
        try:
            self.client.request("PATCH", f"/api/runs/{self.id}", json={"config": body}, retries=1)
        except PhaseboardClientError as exc:
            if exc.status_code is not None:
                self._warn_once("config", f"phaseboard: config not saved: {exc.short}")
                return
            with self._spool_lock:
                self._go_offline(exc)
                assert self._spool is not None
                self._spool.update_meta(config=body)

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        """``{series: {last, last_step, min, max}}``: the server's (after a flush) when online,
        else what this process logged."""
        if self._spool is None and self.id is not None:
            try:
                self.flush(timeout_s=30.0)
                return dict(self.refresh().get("summary") or {})
            except PhaseboardClientError:
                pass
        return {k: dict(v) for k, v in self._local_summary.items()}

    # --- metrics ------------------------------------------------------------------------

    def log(
        self,
        metrics: Mapping[str, Any] | int,
        step: int | Mapping[str, Any] | None = None,
        *,
        commit: bool = True,
        wall_time: float | None = None,
    ) -> None:
        """Record scalar ``metrics``; returns at once (a thread posts them).

        ``log({"loss": 1.0})`` uses the current step and advances it (``commit=False`` keeps
        it, to add more values to the same step); ``log({"loss": 1.0}, step=7)`` and the older
        ``log(7, {"loss": 1.0})`` log at 7 and move the current step to at least 8. Nested dicts
        are flattened with ``/``. Values may be Python numbers, numpy scalars or one-element
        tensors; non-finite or non-numeric values and bad names are dropped with a warning.
        ``wall_time`` (Unix seconds) overrides the time stamp, for importers of old logs.
        """
        if self._closed:
            raise PhaseboardClientError(f"run {self.name!r} is finished; call pb.run() again")
        if isinstance(metrics, Mapping):
            explicit = step
        else:  # the older log(step, metrics) form
            explicit, metrics = metrics, step  # type: ignore[assignment]
            if not isinstance(metrics, Mapping):
                raise TypeError("log() takes a mapping of metrics (and an optional step)")
        if explicit is None:
            at = self._step
            if commit:
                self._step += 1
        else:
            at = int(explicit)  # type: ignore[arg-type]
            self._step = max(self._step, at + 1)
        if self._thread is None:
            self._start()
        now = time.time() if wall_time is None else float(wall_time)
        points = []
        for name, value in flatten_metrics(metrics).items():
            name = str(name)
            point = self._point(name, at, value, now)
            if point is not None:
                points.append(point)
        with self._lock:
            self._buffer.extend(points)
            full = len(self._buffer) >= self.client.flush_every
        if full:
            self._wake.set()

    def _point(self, name: str, step: int, value: Any, now: float) -> dict[str, Any] | None:
        why = _bad_name(name)
        if why is None and not 0 <= step <= _MAX_STEP:
            why = f"step {step} outside 0..2^53-1"
        v = None
        if why is None:
            try:
                v = float(value.item() if hasattr(value, "item") else value)
            except (TypeError, ValueError):
                why = f"value of type {type(value).__name__} is not a number"
        if why is None and v is not None and not math.isfinite(v):
            why = f"non-finite {name}={v} at step {step}"
        if why is not None or v is None:
            self._warn_once(f"name:{name}", f"phaseboard: dropping {name!r}: {why}", stacklevel=4)
            return None
        s = self._local_summary.get(name)
        if s is None:
            self._local_summary[name] = {"last": v, "last_step": step, "min": v, "max": v}
        else:
            if step >= s["last_step"]:
                s["last"], s["last_step"] = v, step
            s["min"], s["max"] = min(s["min"], v), max(s["max"], v)
        return {"step": step, "name": name, "value": v, "wall_time": now}

    def _warn_once(self, key: str, message: str, stacklevel: int = 2) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=stacklevel)

    def flush(self, timeout_s: float | None = None) -> None:
        """Send (or spool) everything buffered now; never raises for a network problem."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._lock:
                while self._sending:  # let the background batch finish first
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._idle.wait(remaining)
                if not self._buffer:
                    break
            self._send_batch()
            if deadline is not None and time.monotonic() > deadline:
                break

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._flush_loop, name=f"phaseboard-flush-{self.name}", daemon=True
        )
        self._thread.start()
        if self._track and self.client.mode == "online":
            self._beat = threading.Thread(
                target=self._heartbeat_loop, name=f"phaseboard-beat-{self.name}", daemon=True
            )
            self._beat.start()

    def _ensure_thread(self) -> None:  # kept for callers that build Run() by hand
        if self._thread is None or not self._thread.is_alive():
            self._start()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.client.flush_interval_s)
            self._wake.clear()
            if self._closed:
                break
            self._send_batch()
            self._maybe_resync()

    def _heartbeat_loop(self) -> None:
        while not self._closed:
            if self.id is not None and self._spool is None:
                # An unreachable server is the flush thread's business (it spools).
                with contextlib.suppress(PhaseboardClientError):
                    self.client.request("POST", f"/api/runs/{self.id}/heartbeat", retries=0)
            self._stop.wait(self.client.heartbeat_s)

    def _send_batch(self) -> None:
        """Post (or spool) up to 5000 buffered points; never raises."""
        with self._lock:
            if self._sending or not self._buffer:
                return
            batch, self._buffer = self._buffer[:_BATCH], self._buffer[_BATCH:]
            self._sending = True
        try:
            if self._spool is not None:
                self._spool.append_points(batch)
                return
            assert self.id is not None
            try:
                dropped = post_points(self.client, self.id, batch)
            except PhaseboardClientError as exc:
                self._go_offline(exc)
                assert self._spool is not None
                self._spool.append_points(batch)
                return
            self.points_sent += len(batch) - len(dropped)
            for d in dropped:
                self._warn_once(f"refused:{d}", f"phaseboard: server refused point {d}; dropped")
        except OSError as exc:  # the spool's disk: keep the points in memory
            with self._lock:
                self._buffer[:0] = batch
                del self._buffer[: max(0, len(self._buffer) - _MAX_BUFFERED)]
            self._warn_once("disk", f"phaseboard: cannot write the spool: {exc}")
        finally:
            with self._lock:
                self._sending = False
                self._idle.notify_all()

    # --- offline and reconnecting -------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        meta = {"name": self.name, "run_id": self.id, "config": dict(self._config)}
        if not self._track:
            meta["status"] = "imported"
        return meta

    def _start_spooling(self, meta: dict[str, Any]) -> None:
        self._spool = Spool.create(self.client.spool_dir, {**meta, "run_id": self.id})
        self._next_sync = time.monotonic() + self.client.reconnect_s

    def _go_offline(self, exc: PhaseboardClientError) -> None:
        """Switch to the spool after a network problem (or a refusal of the whole run)."""
        if self._spool is None:
            self._start_spooling(self._meta())
            self._warn_once(
                "offline",
                f"phaseboard: {exc.short}; spooling run {self.name!r} to {self._spool_path()} "
                "and uploading it when the server answers (training goes on)",
                stacklevel=3,
            )

    def _spool_path(self) -> str:
        return str(self._spool.path) if self._spool is not None else "?"

    def _maybe_resync(self, force: bool = False) -> bool:
        """Upload the spool once the server answers again; True when back online."""
        spool = self._spool
        if spool is None or self.client.mode == "offline":
            return spool is None
        if not force and time.monotonic() < self._next_sync:
            return False
        self._next_sync = time.monotonic() + self.client.reconnect_s
        if not self.client.ping():
            return False
        with self._spool_lock:
            return self._resync_locked(spool)

    def _resync_locked(self, spool: Spool) -> bool:
        with self._lock:  # everything logged so far goes through the spool, in order
            pending, self._buffer = self._buffer, []
        spool.append_points(pending)
        try:
            result = sync_spool(self.client, spool)
        except PhaseboardClientError as exc:
            self._warn_once(f"sync:{exc.short}", f"phaseboard: spool upload paused: {exc.short}")
            return False
        for d in result.dropped:
            self._warn_once(f"refused:{d}", f"phaseboard: server refused point {d}; dropped")
        if result.run_id is None or result.skipped:
            return False
        if self.id is None:
            self.id = result.run_id
            self.data = {**self.data, "id": result.run_id}
        self._uploaded_steps.update(spool.checkpoint_steps())
        self.points_sent += result.points - len(result.dropped)
        if spool.finished is None:
            self._spool = None  # back online; the spool's rest is already uploaded
            self._warn_once("back", f"phaseboard: server back; run {self.name!r} is online")
        shutil.rmtree(spool.path, ignore_errors=True)
        return True

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # --- checkpoints --------------------------------------------------------------------

    def log_checkpoint(self, step: int, model_or_state_dict: Any) -> dict[str, Any] | None:
        """Upload the weights at ``step`` (an ``nn.Module`` or a state_dict).

        Returns the server's checkpoint record, or None when this step was already uploaded
        or the checkpoint went to the spool (server away, or ``mode="offline"``).
        """
        step = int(step)
        if step in self._uploaded_steps:
            return None
        if self._spool is None:
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as f:
                state_dict_to_safetensors(model_or_state_dict, f)
                try:
                    return self.upload_file(step, f, filename=f"step_{step}.safetensors")
                except PhaseboardClientError as exc:
                    if exc.status_code is not None:
                        raise  # refused (e.g. a bad checkpoint): not a network problem
                    self._go_offline(exc)
        with self._spool_lock:
            if self._spool is None:  # came back online meanwhile
                return self.log_checkpoint(step, model_or_state_dict)
            self._spool.add_checkpoint(
                step, lambda f: state_dict_to_safetensors(model_or_state_dict, f)
            )
        return None

    def upload_file(
        self, step: int, fileobj: IO[bytes], filename: str = "checkpoint.safetensors"
    ) -> dict[str, Any] | None:
        """Stream an already serialised checkpoint file; None if ``step`` is already there."""
        resp = self.client.request(
            "POST",
            f"/api/runs/{self.id}/checkpoints",
            files={"file": (filename, fileobj, "application/octet-stream")},
            data={"step": str(step)},
            ok=[409],
            rewind=fileobj,
        )
        self._uploaded_steps.add(step)
        return None if resp.status_code == 409 else resp.json()

    # --- token datasets (the generic tasks' data) -------------------------------------

    def log_dataset(self, name: str, tokens: Any) -> dict[str, Any] | None:
        """Upload token ids as the run's dataset ``name`` (``train``, ``test`` or a subset).

        ``tokens``: an integer tensor or numpy array, a 1-D stream or (N, T) sequences.
        Upload data before checkpoints: the analyses queued for a checkpoint read it.
        Returns the server's record, or None when the run already has a dataset ``name``.
        """
        import io

        import numpy as np

        array = tokens.detach().cpu().numpy() if hasattr(tokens, "detach") else np.asarray(tokens)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return self.upload_dataset_file(name, buf, filename=f"{name}.npy")

    def upload_dataset_file(
        self, name: str, fileobj: IO[bytes], filename: str = "tokens.npy"
    ) -> dict[str, Any] | None:
        """Stream a token file (.npy, .safetensors, .pt); None if ``name`` is already there."""
        resp = self.client.request(
            "POST",
            f"/api/runs/{self.id}/datasets",
            files={"file": (filename, fileobj, "application/octet-stream")},
            data={"name": str(name)},
            ok=[409],
            rewind=fileobj,
        )
        return None if resp.status_code == 409 else resp.json()

    def datasets(self) -> list[dict[str, Any]]:
        return list(self.client.request("GET", f"/api/runs/{self.id}/datasets").json())

    def upload_tokenizer_file(
        self, fileobj: IO[bytes], filename: str = "tokenizer.json"
    ) -> dict[str, Any]:
        """Stream a Hugging Face ``tokenizer.json`` as the run's tokenizer (replacing any
        before it): the views then show token ids as text. A byte-level vocabulary needs no
        file: ``task_config={"tokenizer": "bytes"}``."""
        resp = self.client.request(
            "PUT",
            f"/api/runs/{self.id}/tokenizer",
            files={"file": (filename, fileobj, "application/json")},
            rewind=fileobj,
        )
        return dict(resp.json())

    def checkpoints(self) -> list[dict[str, Any]]:
        body = self.client.request("GET", f"/api/runs/{self.id}/checkpoints").json()
        if isinstance(body, dict):
            body = body.get("items", body.get("checkpoints", []))
        return list(body)

    # --- analyses and reading back ------------------------------------------------------

    def analyze(
        self,
        lenses: list[str] | None = None,
        checkpoint_ids: list[int] | None = None,
        llc: Mapping[str, Any] | None = None,
        *,
        kinds: list[str] | None = None,
        **extra: Any,
    ) -> Any:
        """Queue lenses (``metrics``, ``llc``, ``llc_restricted``, ``influence``, ...: the
        server's ``GET /api/lenses``; none named: the run's automatic ones); returns the jobs.
        ``kinds`` is the older name of ``lenses``.

        Returns None (with a warning) while the run is spooled: analyses need the server.
        """
        self.flush()
        if self._spool is not None or self.id is None:
            self._warn_once("analyze", "phaseboard: run is offline; analyze() skipped")
            return None
        if lenses is not None and kinds is not None and list(lenses) != list(kinds):
            raise ValueError("give lenses or kinds (the same list under its older name), not both")
        named = lenses if lenses is not None else kinds
        body: dict[str, Any] = dict(extra)
        if named is not None:
            body["lenses"] = list(named)
        if checkpoint_ids is not None:
            body["checkpoint_ids"] = list(checkpoint_ids)
        if llc is not None:
            body["llc"] = dict(llc)
        return self.client.request("POST", f"/api/runs/{self.id}/analyses", json=body).json()

    def series(self, name: str, max_points: int | None = None, wall_time: bool = False) -> Any:
        """The series' points (``steps``, ``values``; ``wall_times`` when asked)."""
        params: dict[str, Any] = {"name": name}
        if max_points:
            params["max_points"] = max_points
        if wall_time:
            params["wall_time"] = "true"
        return self.client.request("GET", f"/api/runs/{self.id}/series", params=params).json()

    def jobs(self) -> Any:
        return self.client.request("GET", "/api/jobs", params={"run_id": self.id}).json()

    def results(self, kind: str | None = None) -> Any:
        params = {"kind": kind} if kind else None
        return self.client.request("GET", f"/api/runs/{self.id}/results", params=params).json()

    def refresh(self) -> dict[str, Any]:
        self.data = self.client.request("GET", f"/api/runs/{self.id}").json()
        return self.data

    # --- lifecycle ----------------------------------------------------------------------

    def finish(self, timeout_s: float | None = 120.0, status: str = "finished") -> None:
        """Flush, mark the run ``finished`` (or ``status``), stop the threads; idempotent.

        Never raises for a network problem: what could not be sent stays in the spool, and
        a warning names the ``phaseboard sync`` command that uploads it.
        """
        if self._closed:
            return
        self.flush(timeout_s=timeout_s)
        self._closed = True
        self._wake.set()
        self._stop.set()
        for t in (self._thread, self._beat):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=0.1 if t is self._beat else 5.0)
        if self._spool is None and self.id is not None:
            if not self._track:
                return
            try:
                self.client.request(
                    "POST", f"/api/runs/{self.id}/finish", json={"status": status}, retries=1
                )
                return
            except PhaseboardClientError as exc:
                if exc.status_code is not None:
                    return
                self._go_offline(exc)
        assert self._spool is not None
        self._spool.mark_finished(status)
        if self.client.mode == "online" and self._maybe_resync(force=True):
            return
        warnings.warn(
            f"phaseboard: run {self.name!r} is kept in {self._spool.path}; upload it with "
            f"`phaseboard sync {self._spool.path}`",
            stacklevel=2,
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.finish()
        else:  # do not mask the training loop's own exception
            self.finish(timeout_s=30.0, status="crashed")
