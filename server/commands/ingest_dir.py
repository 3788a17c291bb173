"""``phaseboard ingest``: import a directory of checkpoints (and TensorBoard scalars) into a run.

The directory may be local or any fsspec URL (``s3://bucket/prefix``, ``gs://...``): the walk
is the same (``ingest_source.Source``) and weights stream from the store to the server.
Recognised checkpoints, anywhere under the directory:

- ``step_1000.pt`` / ``ckpt-1000.pth`` / ``1000.safetensors``: the step is read from the name;
- Hugging Face Trainer folders ``checkpoint-1000/`` holding ``model.safetensors`` (or
  ``pytorch_model.bin``); their optimizer/scheduler/RNG files are not checkpoints and ignored.
  Sharded weights (``model.safetensors.index.json`` + ``model-0000N-of-0000M.safetensors``)
  are uploaded as one safetensors file, read shard by shard as it is sent (``server.shards``).

Steps come from the path (``--step-regex`` with one group overrides the default patterns).
Files are uploaded as they are, streamed from disk; the server loads them safely
(safetensors, or ``torch.load(weights_only=True)``). Scalars in ``events.out.tfevents.*``
files become metric series, and so does the ``log_history`` of the newest Hugging Face
``trainer_state.json`` (loss, learning_rate, grad_norm, eval_* at their steps). A second
import of the same directory skips every step the server already has, so an interrupted
import can simply be run again.

For the generic tasks: ``checkpoint-N/config.json`` becomes ``task_config["hf_config"]``. With
no task given, a ``config.json`` that describes a causal LM makes the task ``hf_causal_lm``;
one that describes another kind of model is refused with the flag to add (``choose_task``),
and a folder with no ``config.json`` is imported without a task, the summary saying so and
how to set one (nothing is analysed until then). A ``tokenizer.json`` beside the newest
checkpoint's weights (or at the root, where the Trainer's ``save_model`` writes it) becomes the
run's tokenizer, so the views show token ids as text; ``tokenizer=PATH`` names another file,
``tokenizer="bytes"`` sets ``task_config["tokenizer"]`` for a byte-level vocabulary. Token
files given as ``data={"train": path, ...}`` are uploaded as the run's datasets, and the
tokenizer with them, before any checkpoint, so the analyses queued on upload find them. At
the end the server is told the import is complete (``POST /api/runs/{id}/finish`` with status
``imported``): a run without LLC settings of its own is calibrated then, on its whole
trajectory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from phaseboard import Phaseboard, PhaseboardClientError, Run
from phaseboard.server.commands.ingest_hparams import model_summary
from phaseboard.server.commands.ingest_source import Source
from phaseboard.server.shards import INDEX_NAME, MergedSafetensors, ShardError

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
HF_MODEL_FILES = ("model.safetensors", INDEX_NAME, "pytorch_model.bin")
# Files a Hugging Face Trainer (or similar) writes beside the weights; never checkpoints.
NOT_WEIGHTS = re.compile(
    r"^(optimizer|scheduler|scaler|rng_state.*|training_args|trainer_state)\.(pt|pth|bin)$"
)
# The tasks whose examples are token ids (``--tokenizer bytes`` is a key of their config).
TOKEN_TASKS = ("hf_causal_lm", "transformer_lens", "torch_module")
TOKENIZER_FILE = "tokenizer.json"
BYTES = "bytes"
# Read at most this much of a tokenizer file; the server's own limit is smaller by default.
MAX_TOKENIZER_READ = 256 * 1024 * 1024
SHARDED = re.compile(r"-\d{5}-of-\d{5}\.(safetensors|bin)$")
DEFAULT_STEP_PATTERNS = [
    re.compile(r"(?:step|checkpoint|ckpt|iter|iteration|global_step)[-_=]?(\d+)", re.I),
    re.compile(r"^(\d+)$"),  # a bare number as a file stem or folder name
]


@dataclass
class Item:
    """One row of the summary: what was found, its step, and what happened to it."""

    kind: str  # "checkpoint" | "scalars" | "dataset" | "tokenizer"
    path: str
    step: int | None = None
    status: str = "pending"  # imported | skipped | failed
    detail: str = ""
    size: int = 0


@dataclass
class IngestReport:
    run_id: int
    run_url: str
    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed after the table, in yellow

    def count(self, status: str, kind: str | None = None) -> int:
        return sum(1 for i in self.items if i.status == status and kind in (None, i.kind))

    @property
    def failed(self) -> int:
        return self.count("failed")


# --- discovery ----------------------------------------------------------------------------


def step_from_path(rel: Path, step_regex: str | None = None) -> int | None:
    """The training step encoded in a path relative to the import root, or None."""
    if step_regex:
        m = re.search(step_regex, rel.as_posix())
        if not m:
            return None
        return int(m.group(1) if m.groups() else m.group(0))
    parts = [rel.name.split(".")[0], *(p for p in reversed(rel.parent.parts))]
    for part in parts:
        for pattern in DEFAULT_STEP_PATTERNS:
            found = pattern.findall(part)
            if found:
                return int(found[-1])
    return None


def discover_checkpoints(root: Path | str | Source, step_regex: str | None = None) -> list[Item]:
    """Every checkpoint-looking file under ``root``, in step order; unusable ones marked."""
    source = root if isinstance(root, Source) else Source(root)
    files = source.files()
    items: list[Item] = []
    hf_dirs: set[str] = set()
    for model_name in HF_MODEL_FILES:  # HF folders: one weights file per folder, safetensors first
        for rel in sorted(r for r in files if posixpath.basename(r) == model_name):
            folder = posixpath.dirname(rel)
            if folder in hf_dirs:
                continue
            hf_dirs.add(folder)
            item = Item("checkpoint", rel, size=files[rel])
            if model_name == INDEX_NAME:
                try:
                    with _merged(source, rel) as merged:
                        item.size = merged.size
                except ShardError as exc:
                    item.status, item.detail = "skipped", f"cannot merge shards: {exc}"
            items.append(item)
    for rel in sorted(files):
        name = posixpath.basename(rel)
        if not name.endswith(CHECKPOINT_SUFFIXES):
            continue
        if posixpath.dirname(rel) in hf_dirs or NOT_WEIGHTS.match(name):
            continue
        item = Item("checkpoint", rel, size=files[rel])
        if SHARDED.search(name):
            item.status, item.detail = "skipped", "sharded weights are not supported; merge first"
        items.append(item)
    seen: dict[int, str] = {}
    for item in items:
        item.step = step_from_path(Path(item.path), step_regex)
        if item.status != "pending":
            continue
        if item.step is None:
            item.status = "skipped"
            item.detail = "no step in the name (use --step-regex)"
        elif item.step in seen:
            item.status, item.detail = "skipped", f"duplicate step (also {seen[item.step]})"
        else:
            seen[item.step] = item.path
    items.sort(key=lambda i: (i.step is None, i.step or 0, i.path))
    return items


def _merged(source: Source, rel: str) -> MergedSafetensors:
    """A sharded checkpoint's index opened as the merged shards (local or remote)."""
    if source.is_local:
        return MergedSafetensors(Path(source.full(rel)))
    return MergedSafetensors(source.full(rel), fs=source.fs)


def find_hf_config(root: Path | str | Source, items: list[Item]) -> dict[str, Any] | None:
    """The ``config.json`` beside the newest Hugging Face checkpoint's weights, if any."""
    source = root if isinstance(root, Source) else Source(root)
    files = source.files()
    for item in sorted(items, key=lambda i: i.step or -1, reverse=True):
        rel = posixpath.join(posixpath.dirname(item.path), "config.json")
        if posixpath.basename(item.path) in HF_MODEL_FILES and rel in files:
            try:
                data = json.loads(source.read_text(rel))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("model_type"):
                return data
    return None


def find_tokenizer(root: Path | str | Source, items: list[Item]) -> str | None:
    """The ``tokenizer.json`` beside the newest Hugging Face checkpoint's weights, else one at
    the root (a Trainer given a tokenizer writes it in both places), as a relative path."""
    source = root if isinstance(root, Source) else Source(root)
    files = source.files()
    for item in sorted(items, key=lambda i: i.step or -1, reverse=True):
        rel = posixpath.join(posixpath.dirname(item.path), TOKENIZER_FILE)
        if posixpath.basename(item.path) in HF_MODEL_FILES and rel in files:
            return rel
    return TOKENIZER_FILE if TOKENIZER_FILE in files else None


def with_tokenizer_flag(
    tokenizer: str | Path | None, task: str | None, task_config: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The task config with ``--tokenizer bytes`` applied (token tasks only)."""
    if str(tokenizer) != BYTES:
        return task_config
    if task not in TOKEN_TASKS:
        raise PhaseboardClientError(
            f"--tokenizer bytes applies to the token tasks ({', '.join(TOKEN_TASKS)}); this "
            f"import's task is {task or 'none'} (add --task); nothing was imported"
        )
    return {**(task_config or {}), "tokenizer": BYTES}


def upload_tokenizer(
    run: Run, report: IngestReport, source: Source, rel: str, where: str | None = None
) -> None:
    """Send ``rel`` of ``source`` (a ``tokenizer.json``) as the run's tokenizer, unless the
    server holds the same bytes already; a summary row (``where``: its path) says what
    happened."""
    item = Item("tokenizer", where or rel)
    report.items.append(item)
    try:
        with source.open(rel) as f:
            data = f.read(MAX_TOKENIZER_READ + 1)
    except OSError as exc:
        item.status, item.detail = "failed", f"cannot read: {exc}"
        return
    if len(data) > MAX_TOKENIZER_READ:
        item.status = "failed"
        item.detail = f"larger than {MAX_TOKENIZER_READ // 2**20} MB: not a tokenizer.json"
        return
    item.size = len(data)
    try:
        have = run.client.request("GET", f"/api/runs/{run.id}/tokenizer", ok=[404])
        same = have.status_code == 200 and have.json().get("sha256") == _sha256(data)
        if same:
            item.status, item.detail = "skipped", "already on the server"
            return
        record = run.upload_tokenizer_file(io.BytesIO(data), filename=posixpath.basename(rel))
    except PhaseboardClientError as exc:
        item.status, item.detail = "failed", exc.short
        return
    item.status, item.detail = "imported", f"vocabulary of {record['vocab_size']:,}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_causal_lm(hf_config: Mapping[str, Any]) -> bool:
    """A config whose architectures name a causal LM, or (none named) whose model type
    ``transformers`` maps to one."""
    archs = hf_config.get("architectures") or []
    if archs:
        return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency of the generic tasks
        return False
    return str(hf_config.get("model_type") or "") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def choose_task(
    source: str,
    hf_config: Mapping[str, Any] | None,
    task: str | None,
    task_config: dict[str, Any] | None,
    console: Console,
) -> tuple[str | None, dict[str, Any] | None]:
    """The run's task and task config for an import from ``source``.

    A Hugging Face ``config.json`` of a causal LM with no ``--task`` (or ``--task
    hf_causal_lm``) gives ``hf_causal_lm`` with the config; one of another kind of model and
    no ``--task`` is refused, naming the flag to add; a given task is kept as it is.
    """
    if hf_config is None or task not in (None, "hf_causal_lm"):
        return task, task_config
    if task is None and not _is_causal_lm(hf_config):
        kind = ", ".join(map(str, hf_config.get("architectures") or [])) or str(
            hf_config.get("model_type")
        )
        raise PhaseboardClientError(
            f"{source}: config.json describes a {kind}, not a causal language model, and no "
            "--task was given. Add --task hf_causal_lm to analyse it as a causal LM anyway "
            "(its weights must load into AutoModelForCausalLM), or --task torch_module "
            '--task-config \'{"factory": "your_package.module:function"}\' for your own '
            "model class (docs/your-own-model.md); nothing was imported"
        )
    if task is None:
        console.print("config.json describes a causal LM: task [bold]hf_causal_lm[/bold]")
    return "hf_causal_lm", {"hf_config": dict(hf_config), **(task_config or {})}


NO_TASK_NOTE = (
    "run {name!r} has no task: its checkpoints are stored but nothing analyses them. Add "
    "--task NAME (e.g. --task hf_causal_lm, --task torch_module) and run the same command "
    "again (stored steps are skipped), or set the task on the run page; either checks the "
    "stored checkpoints against the task's model first"
)


def mark_imported(run: Run) -> None:
    """Tell the server the import is complete (status ``imported``): its automatic LLC
    calibration, if LLC jobs wait for one, starts now on the whole trajectory."""
    # An older server, or a gone one, refuses: the workers' sweep calibrates it later.
    with contextlib.suppress(PhaseboardClientError):
        run.client.request("POST", f"/api/runs/{run.id}/finish", json={"status": "imported"})


Series = dict[str, list[tuple[int, float]]]
# {series name: {step: wall-clock time (s since the epoch)}}, where the source records one.
WallTimes = dict[str, dict[int, float]]


def read_tensorboard_scalars(root: Path, wall_times: WallTimes | None = None) -> Series:
    """Scalars from every TensorBoard event file under ``root``: ``{tag: [(step, value)]}``.

    Tags are used as metric names; when event files sit in several folders, the folder (relative
    to ``root``) prefixes the tag so ``train/loss`` of two folders stay apart. ``wall_times``,
    if given, is filled with each point's wall time.
    """
    from tensorboard.backend.event_processing import event_accumulator

    dirs = sorted({p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()})
    series: dict[str, list[tuple[int, float]]] = {}
    for d in dirs:
        acc = event_accumulator.EventAccumulator(
            str(d), size_guidance={event_accumulator.SCALARS: 0}
        )
        acc.Reload()
        prefix = "" if len(dirs) == 1 else f"{d.relative_to(root).as_posix()}/"
        for tag in acc.Tags().get("scalars", []):
            events = acc.Scalars(tag)
            by_step = {int(e.step): float(e.value) for e in events}  # last one wins
            series[prefix + tag] = sorted(by_step.items())
            if wall_times is not None:
                wall_times[prefix + tag] = {int(e.step): float(e.wall_time) for e in events}
    return series


def read_trainer_state(root: Path) -> Series:
    """``log_history`` of the newest Hugging Face ``trainer_state.json`` under ``root``.

    Each later ``checkpoint-N/trainer_state.json`` repeats the earlier history, so the one with
    the highest ``global_step`` is read. Every numeric entry but ``step`` becomes a series
    named as the Trainer names it (``loss``, ``learning_rate``, ``eval_loss``, ...). The
    Trainer records no wall time per entry.
    """
    best: tuple[int, list[Any]] | None = None
    for path in root.rglob("trainer_state.json"):
        try:
            state = json.loads(path.read_text())
            history = state["log_history"]
            global_step = int(state.get("global_step") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(history, list) and (best is None or global_step > best[0]):
            best = (global_step, history)
    series: dict[str, dict[int, float]] = {}
    for entry in best[1] if best else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
            continue
        for key, value in entry.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key != "step" and number and math.isfinite(value):
                series.setdefault(key, {})[entry["step"]] = float(value)
    return {name: sorted(points.items()) for name, points in series.items()}


# --- upload -------------------------------------------------------------------------------


class _ProgressFile:
    """A read-only file wrapper that advances a rich progress task as httpx reads it."""

    def __init__(self, f: IO[bytes], progress: Progress, task: TaskID) -> None:
        self._f, self._progress, self._task = f, progress, task
        self.mode = "rb"
        self.name = getattr(f, "name", "checkpoint")

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._progress.advance(self._task, len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._f.seek(offset, whence)
        if whence == 0:
            self._progress.update(self._task, completed=pos)
        return pos

    def tell(self) -> int:
        return self._f.tell()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1024 * 1024):
            yield chunk


def _server_steps(run: Run) -> set[int]:
    return {int(c["step"]) for c in run.checkpoints()}


def _series_steps(run: Run, name: str) -> set[int]:
    try:
        body: Any = run.series(name, max_points=200_000)
    except PhaseboardClientError:
        return set()
    points = body.get("points", body.get("data", [])) if isinstance(body, dict) else body
    if isinstance(body, dict) and "steps" in body:
        return {int(s) for s in body["steps"]}
    steps = set()
    for p in points or []:
        if isinstance(p, dict) and "step" in p:
            steps.add(int(p["step"]))
        elif isinstance(p, list | tuple) and p:
            steps.add(int(p[0]))
    return steps


def ingest_directory(
    root: Path | str,
    run_name: str,
    client: Phaseboard,
    *,
    task: str | None = None,
    task_config: dict[str, Any] | None = None,
    step_regex: str | None = None,
    console: Console | None = None,
    data: Mapping[str, Path] | None = None,
    config: Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
) -> IngestReport:
    """Import ``root`` (a directory or an fsspec URL) into the run ``run_name`` (created if
    needed); see the module docstring.

    ``data`` maps dataset names (``train``, ``test``, subsets) to token files to upload;
    ``config`` is merged over the hyperparameters read from the folder (``ingest_hparams``);
    ``tokenizer`` is a ``tokenizer.json`` path or ``"bytes"`` (default: the folder's own).
    """
    console = console or Console()
    check_step_regex(step_regex)
    try:
        source = Source(root)
        found = source.exists()
    except OSError as exc:
        raise PhaseboardClientError(str(exc)) from exc
    if not found:
        raise PhaseboardClientError(f"{root} is not a directory (or holds no files)")

    from phaseboard.server.commands.ingest_hparams import read_hparams

    with source.metadata_dir() as meta:
        hparams = read_hparams(meta)  # TensorBoard hparams, trainer_state.json settings -> config
        items = discover_checkpoints(source, step_regex)
        hf_config = find_hf_config(source, items)
        task, task_config = choose_task(str(root), hf_config, task, task_config, console)
        task_config = with_tokenizer_flag(tokenizer, task, task_config)
        hparams.update(model_summary(hf_config))
        hparams.update(config or {})
        run = client.run(
            run_name, task=task, task_config=task_config, config=hparams or None, status="imported"
        )
        report = IngestReport(run.id, run.url)
        _ingest_datasets(run, data or {}, report)
        if tokenizer is not None and str(tokenizer) != BYTES:
            path = Path(tokenizer)
            upload_tokenizer(run, report, Source(path.parent), path.name, str(path))
        elif tokenizer is None and (found_tok := find_tokenizer(source, items)) is not None:
            upload_tokenizer(run, report, source, found_tok)
        report.items.extend(items)
        upload_items(run, items, lambda item: _open_weights(source, item.path), console)
        _ingest_scalars(meta, run, report, console)
    note_task(run, report)
    mark_imported(run)
    return report


def note_task(run: Run, report: IngestReport) -> None:
    """A run that ends an import without a task gets a note saying so and what to do."""
    try:
        task = run.refresh().get("task")
    except PhaseboardClientError:
        return
    if not task and report.count("imported", "checkpoint") + report.count("skipped", "checkpoint"):
        report.notes.append(NO_TASK_NOTE.format(name=run.name))


def check_step_regex(step_regex: str | None) -> None:
    if step_regex:
        try:
            re.compile(step_regex)
        except re.error as exc:
            raise PhaseboardClientError(f"--step-regex {step_regex!r}: {exc}") from exc


def upload_items(
    run: Run,
    items: list[Item],
    open_item: Callable[[Item], IO[bytes]],
    console: Console,
    on_done: Callable[[Item], None] | None = None,
) -> None:
    """Upload every pending item (``open_item`` gives its bytes), skipping steps the server
    has; a server that goes away stops the loop (a rerun resumes). ``on_done`` is called
    after each item (progress reports)."""
    on_server = _server_steps(run)
    for item in items:
        if item.status == "pending" and item.step in on_server:
            item.status, item.detail = "skipped", "already on the server"

    todo = [i for i in items if i.status == "pending"]
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False, disable=not todo) as progress:
        overall = progress.add_task(
            f"{len(todo)} checkpoints", total=sum(i.size for i in todo) or None
        )
        for item in todo:
            current = progress.add_task(f"step {item.step}", total=item.size)
            stop = False
            try:
                with open_item(item) as f:
                    record = run.upload_file(
                        int(item.step or 0),
                        _ProgressFile(f, progress, current),  # type: ignore[arg-type]
                        filename=posixpath.basename(str(getattr(f, "name", item.path))),
                    )
                if record is None:
                    item.status, item.detail = "skipped", "already on the server"
                else:
                    item.status = "imported"
                    item.detail = _record_detail(record)
            except PhaseboardClientError as exc:
                item.status, item.detail = "failed", exc.short
                stop = exc.status_code is None  # server gone: stop, a rerun resumes here
            except (OSError, ShardError) as exc:
                item.status, item.detail = "failed", f"cannot read: {exc}"
            progress.remove_task(current)
            progress.advance(overall, item.size)
            if on_done is not None:
                on_done(item)
            if stop:
                break
    for item in todo:
        if item.status == "pending":
            item.status, item.detail = "skipped", "not reached (import stopped early)"
    _note_duplicates(run, items)


def _note_duplicates(run: Run, items: list[Item]) -> None:
    """Name, on each imported step, a later step the server found with the same weights
    (an upload is only compared with what arrived before it)."""
    try:
        dup = {int(c["step"]): c.get("duplicate_of_step") for c in run.checkpoints()}
    except PhaseboardClientError:
        return
    for item in items:
        of = dup.get(item.step) if item.step is not None else None
        if of is not None and item.status != "failed" and f"step {of}" not in item.detail:
            note = f"same weights as step {of}"
            item.detail = f"{item.detail}; {note}" if item.detail else note


def _record_detail(record: Mapping[str, Any]) -> str:
    """What the server said about a stored checkpoint worth a line in the summary."""
    notes = []
    if record.get("status") == "flagged":
        notes.append(f"flagged: {record.get('error')}")
    if record.get("duplicate_of_step") is not None:
        notes.append(f"same weights as step {record['duplicate_of_step']}")
    return "; ".join(notes)


def _open_weights(source: Source, rel: str) -> IO[bytes]:
    """The file to upload: a sharded checkpoint's index opens as the merged shards."""
    if posixpath.basename(rel) == INDEX_NAME:
        return _merged(source, rel)  # type: ignore[return-value]
    return source.open(rel)


def _ingest_datasets(run: Run, data: Mapping[str, Path], report: IngestReport) -> None:
    """Upload each token file as a dataset of the run (before the checkpoints)."""
    for name, path in data.items():
        item = Item("dataset", f"{name}={path}", size=0)
        report.items.append(item)
        try:
            with Path(path).open("rb") as f:
                record = run.upload_dataset_file(name, f, filename=Path(path).name)
        except PhaseboardClientError as exc:
            item.status, item.detail = "failed", exc.short
            continue
        except OSError as exc:
            item.status, item.detail = "failed", f"cannot read: {exc}"
            continue
        if record is None:
            item.status, item.detail = "skipped", "already on the server"
        else:
            item.status, item.detail = "imported", f"{record['n_tokens']} tokens {record['shape']}"


def _ingest_scalars(root: Path, run: Run, report: IngestReport, console: Console) -> None:
    wall_times: WallTimes = {}
    try:
        series = read_tensorboard_scalars(root, wall_times)
    except Exception as exc:  # noqa: BLE001 - a broken event file must not sink the import
        report.items.append(Item("scalars", "events.out.tfevents.*", None, "failed", str(exc)))
        series = {}
    for name, points in read_trainer_state(root).items():
        series.setdefault(name, points)  # TensorBoard's copy (with wall times) wins
    _log_series(run, report, series, wall_times)


def _log_series(run: Run, report: IngestReport, series: Series, wall_times: WallTimes) -> None:
    """Send each series not yet on the server.

    ``wall_times`` holds the wall-clock time of each point where the source recorded one
    (TensorBoard does); it is stored with the point, so wall-time x-axes show the original run.
    """
    for name, points in series.items():
        item = Item("scalars", name, detail=f"{len(points)} points")
        report.items.append(item)
        if not points:
            item.status, item.detail = "skipped", "no points"
            continue
        if {s for s, _ in points} <= _series_steps(run, name):
            item.status, item.detail = "skipped", f"already on the server ({len(points)} points)"
            continue
        try:
            times = wall_times.get(name, {})
            for step, value in points:
                run.log(step, {name: value}, wall_time=times.get(step))
            run.flush()
            item.status = "imported"
        except PhaseboardClientError as exc:
            item.status, item.detail = "failed", exc.short


def print_summary(report: IngestReport, console: Console) -> None:
    """A table of every item found, then the totals."""
    table = Table(title="phaseboard ingest", show_lines=False)
    for col in ("kind", "path / tag", "step", "status", "detail"):
        table.add_column(col, overflow="fold")
    style = {"imported": "green", "skipped": "yellow", "failed": "red"}
    for i in report.items:
        table.add_row(
            i.kind,
            i.path,
            "" if i.step is None else str(i.step),
            f"[{style.get(i.status, '')}]{i.status}[/]",
            i.detail,
        )
    console.print(table)
    parts = []
    kinds = [("checkpoint", "checkpoints"), ("scalars", "scalar series")]
    if any(i.kind == "dataset" for i in report.items):
        kinds.insert(0, ("dataset", "datasets"))
    if any(i.kind == "tokenizer" for i in report.items):
        kinds.insert(0, ("tokenizer", "tokenizer"))
    for kind, label in kinds:
        n = {s: report.count(s, kind) for s in ("imported", "skipped", "failed")}
        parts.append(
            f"{label}: {n['imported']} imported, {n['skipped']} skipped, {n['failed']} failed"
        )
    for part in parts:
        console.print(part)
    for note in report.notes:
        console.print(f"[yellow]note[/yellow]: {note}")
    console.print(f"run page: [bold]{report.run_url}[/bold]")
