"""A small HTTP client for training loops, shaped like ``wandb.log`` / ``mlflow.log_metric``.

    from server.client import Phaseboard

    pb = Phaseboard("http://127.0.0.1:8765", token=None)
    with pb.run("grokking-p53", task="modular_addition", task_config={"p": 53}) as run:
        for step in range(steps):
            ...
            run.log(step, {"train_loss": loss.item()})
            if step in checkpoint_steps:
                run.log_checkpoint(step, model)
        run.analyze(kinds=["metrics", "llc"])
    print(run.url)

``log`` only appends to an in-memory buffer; a background thread posts it in batches, so a
slow or briefly unreachable server never stalls training. ``log_checkpoint`` serialises the
weights to safetensors in a spooled temp file and streams the upload, retrying connection
errors and 5xx answers with exponential backoff; an already uploaded step counts as done.
Everything still buffered is flushed by ``run.finish()``, the context manager, or at exit.
"""

from __future__ import annotations

import atexit
import math
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = ["Phaseboard", "PhaseboardClientError", "Run", "state_dict_to_safetensors"]

DEFAULT_URL = "http://127.0.0.1:8765"
_RETRY_STATUS = {500, 502, 503, 504}
_MAX_BUFFERED = 2_000_000  # metric points held while the server is unreachable
_SPOOL_BYTES = 64 * 1024 * 1024  # checkpoints larger than this are serialised to disk


class PhaseboardClientError(Exception):
    """The server refused a request (``status_code``, ``code``) or could not be reached."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.detail = detail if detail is not None else message  # the server's own words

    @property
    def short(self) -> str:
        """``code: detail`` for tables and one-line reports."""
        return f"{self.code}: {self.detail}" if self.code else self.detail


def _error_from_response(resp: httpx.Response, what: str) -> PhaseboardClientError:
    code, detail = None, resp.text[:500]
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error")
        raw = body.get("detail", detail)
        detail = raw if isinstance(raw, str) else str(raw)
    return PhaseboardClientError(
        f"{what}: HTTP {resp.status_code} {code or ''}: {detail}".replace("  ", " "),
        status_code=resp.status_code,
        code=code,
        detail=detail,
    )


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

    ``url`` defaults to the local server; ``token`` is needed when the server sets
    ``PHASEBOARD_API_TOKEN``. ``flush_every`` points or ``flush_interval_s`` seconds, whichever
    comes first, trigger a metrics batch.
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
    ) -> None:
        self.url = (url or DEFAULT_URL).rstrip("/")
        self.token = token or None
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
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
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
            return httpx.get(f"{self.url}/api/health", timeout=timeout_s).is_success
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
    ) -> Run:
        """Get the run called ``name``, creating it if it does not exist yet.

        An existing run keeps its task; fields it lacks (task, config, tags, notes) are filled
        in from the arguments.
        """
        body: dict[str, Any] = {"name": name}
        for key, value in (
            ("task", task),
            ("task_config", dict(task_config) if task_config is not None else None),
            ("tags", tags),
            ("notes", notes),
            ("analysis_config", dict(analysis_config) if analysis_config is not None else None),
        ):
            if value is not None:
                body[key] = value
        data = self._find_by_name(name)
        if data is None:
            resp = self.request("POST", "/api/runs", json=body, ok=[409])
            data = resp.json() if resp.status_code != 409 else self._find_by_name(name)
            if data is None:
                raise _error_from_response(resp, "POST /api/runs")
        else:
            if task is not None and data.get("task") not in (None, task):
                warnings.warn(
                    f"phaseboard: run {name!r} already has task {data['task']!r}; keeping it",
                    stacklevel=2,
                )
            patch = {k: v for k, v in body.items() if k != "name" and not data.get(k)}
            if patch:
                data = self.request("PATCH", f"/api/runs/{data['id']}", json=patch).json()
        run = Run(self, data)
        self._runs.add(run)
        return run

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


class Run:
    """One run on the server: buffered ``log``, ``log_checkpoint``, ``analyze``, ``url``."""

    def __init__(self, client: Phaseboard, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data
        self.id: int = int(data["id"])
        self.name: str = str(data["name"])
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._sending = False
        self._closed = False
        self._error: PhaseboardClientError | None = None
        self._dropped_nonfinite: set[str] = set()
        self._uploaded_steps: set[int] = set()
        self._thread: threading.Thread | None = None
        self.points_sent = 0

    def __repr__(self) -> str:
        return f"Run(id={self.id}, name={self.name!r}, url={self.url!r})"

    @property
    def url(self) -> str:
        """The run page in the dashboard."""
        return f"{self.client.url}/runs/{self.id}"

    # --- metrics ------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record scalar ``metrics`` at ``step``; returns at once (a thread posts them).

        Values may be Python numbers, numpy scalars or one-element tensors. Non-finite
        values are dropped with a warning (JSON cannot carry them).
        """
        self._raise_pending()
        if self._closed:
            raise PhaseboardClientError(f"run {self.name!r} is finished; call pb.run() again")
        step = int(step)
        points = []
        for name, value in metrics.items():
            v = float(value.item() if hasattr(value, "item") else value)
            if not math.isfinite(v):
                if name not in self._dropped_nonfinite:
                    self._dropped_nonfinite.add(name)
                    warnings.warn(
                        f"phaseboard: dropping non-finite {name}={v} at step {step}", stacklevel=2
                    )
                continue
            points.append({"step": step, "name": str(name), "value": v})
        with self._lock:
            self._buffer.extend(points)
            if len(self._buffer) > _MAX_BUFFERED:  # server away for very long: keep the newest
                del self._buffer[: len(self._buffer) - _MAX_BUFFERED]
            full = len(self._buffer) >= self.client.flush_every
        self._ensure_thread()
        if full:
            self._wake.set()

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything buffered now (in this thread); raise if the server refused any."""
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
            err = self._send_batch()
            if err is not None:
                self._error = None
                raise err
            if deadline is not None and time.monotonic() > deadline:
                break
        self._raise_pending()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._flush_loop, name=f"phaseboard-flush-{self.id}", daemon=True
            )
            self._thread.start()

    def _flush_loop(self) -> None:
        warned = False
        while not self._closed:
            self._wake.wait(self.client.flush_interval_s)
            self._wake.clear()
            if self._closed:
                break
            err = self._send_batch()
            if err is None:
                warned = False
            elif err.status_code is None:  # unreachable: points kept, try again later
                if not warned:
                    warnings.warn(f"phaseboard: {err}; will retry", stacklevel=1)
                    warned = True
            else:  # refused: the training thread sees it on its next log()
                self._error = err

    def _send_batch(self) -> PhaseboardClientError | None:
        """Post up to 5000 buffered points; unsent points go back in front of the buffer."""
        with self._lock:
            if self._sending or not self._buffer:
                return None
            batch, self._buffer = self._buffer[:5000], self._buffer[5000:]
            self._sending = True
        try:
            self.client.request("POST", f"/api/runs/{self.id}/metrics", json=batch)
            self.points_sent += len(batch)
            return None
        except PhaseboardClientError as exc:
            if exc.status_code is None:
                with self._lock:
                    self._buffer[:0] = batch
            return exc
        finally:
            with self._lock:
                self._sending = False
                self._idle.notify_all()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # --- checkpoints --------------------------------------------------------------------

    def log_checkpoint(self, step: int, model_or_state_dict: Any) -> dict[str, Any] | None:
        """Upload the weights at ``step`` (an ``nn.Module`` or a state_dict).

        Returns the server's checkpoint record, or None when this step was already uploaded.
        """
        step = int(step)
        if step in self._uploaded_steps:
            return None
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as f:
            state_dict_to_safetensors(model_or_state_dict, f)
            return self.upload_file(step, f, filename=f"step_{step}.safetensors")

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

    def checkpoints(self) -> list[dict[str, Any]]:
        body = self.client.request("GET", f"/api/runs/{self.id}/checkpoints").json()
        if isinstance(body, dict):
            body = body.get("items", body.get("checkpoints", []))
        return list(body)

    # --- analyses and reading back ------------------------------------------------------

    def analyze(
        self,
        kinds: list[str] | None = None,
        checkpoint_ids: list[int] | None = None,
        llc: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> Any:
        """Queue analyses (``metrics``, ``llc``, ``llc_restricted``, ``phases``); returns jobs."""
        self.flush()
        body: dict[str, Any] = dict(extra)
        if kinds is not None:
            body["kinds"] = list(kinds)
        if checkpoint_ids is not None:
            body["checkpoint_ids"] = list(checkpoint_ids)
        if llc is not None:
            body["llc"] = dict(llc)
        return self.client.request("POST", f"/api/runs/{self.id}/analyses", json=body).json()

    def series(self, name: str, max_points: int | None = None) -> Any:
        params: dict[str, Any] = {"name": name}
        if max_points:
            params["max_points"] = max_points
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

    def finish(self, timeout_s: float | None = 120.0) -> None:
        """Flush what is buffered and stop the background thread; idempotent."""
        if self._closed:
            self._raise_pending()
            return
        try:
            self.flush(timeout_s=timeout_s)
        finally:
            self._closed = True
            self._wake.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=5.0)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.finish()
        else:  # do not mask the training loop's own exception
            try:
                self.finish(timeout_s=30.0)
            except PhaseboardClientError as err:
                warnings.warn(f"phaseboard: {err}", stacklevel=2)
