"""``phaseboard ingest hf://ORG/NAME``: a series published as one Hub branch per checkpoint.

Pythia, OLMo and others publish a branch per training step (``step1000``, ...). The import
lists the repo's branches (``--revisions``: globs or names, comma separated), takes each
branch's step from its name (``--step-regex`` as for files), optionally thins a long series
(``--every K``: every K-th; ``--max N``: at most N, log-spaced over the steps, first and last
kept), and uploads each revision's weights, a sharded checkpoint merged shard by shard as it
is sent. The task is ``hf_causal_lm`` with the repo's ``config.json`` (of the last revision),
and the ``tokenizer.json`` of that revision, where it has one, becomes the run's tokenizer (the
views then show token ids as text; ``tokenizer=`` a path or ``"bytes"`` overrides it).

Downloads go through ``huggingface_hub``, so its cache (``HF_HOME``, ``HF_HUB_CACHE``), its
offline mode (``HF_HUB_OFFLINE=1``) and ``HF_TOKEN`` apply: a revision already in the cache
is never fetched again. Listing branches needs the Hub; offline, they are read from the
cache's ``refs/`` folder (the branches downloaded before). Steps the server already has are
skipped before anything is downloaded, so an interrupted import is resumed by running it
again. Equal weights at two steps are stored once and flagged by the server.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from phaseboard import Phaseboard, PhaseboardClientError
from phaseboard.server.commands.ingest_dir import (
    IngestReport,
    Item,
    _ingest_datasets,
    check_step_regex,
    choose_task,
    mark_imported,
    note_task,
    step_from_path,
    upload_items,
    upload_tokenizer,
    with_tokenizer_flag,
)
from phaseboard.server.commands.ingest_hparams import model_summary
from phaseboard.server.commands.ingest_source import Source
from phaseboard.server.shards import INDEX_NAME, MergedSafetensors

__all__ = [
    "cached_branches",
    "ingest_hub",
    "parse_hub_url",
    "select_revisions",
    "thin_steps",
]

HUB_PREFIX = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SAFETENSORS = ["config.json", "model.safetensors", INDEX_NAME, "model-*-of-*.safetensors"]
TORCH_BIN = ["config.json", "pytorch_model.bin"]


def parse_hub_url(url: str) -> str:
    """``hf://ORG/NAME`` -> ``ORG/NAME`` (model repos)."""
    repo = url.removeprefix(HUB_PREFIX).removeprefix("models/").strip("/")
    if not _REPO.match(repo):
        raise PhaseboardClientError(f"{url!r}: expected hf://ORG/NAME (a model repo on the Hub)")
    return repo


def _hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise PhaseboardClientError("hf:// imports need huggingface_hub installed") from exc
    return huggingface_hub


def cached_branches(repo_id: str) -> list[str]:
    """Branch names recorded in the Hub cache's ``refs/`` folder (pull-request refs aside)."""
    hub = _hub()
    refs = Path(hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs"
    if not refs.is_dir():
        return []
    names = (p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
    return sorted(n for n in names if not n.startswith("pr/"))


def list_branches(repo_id: str, token: str | None) -> tuple[list[str], str]:
    """The repo's branches and where they came from ("the Hub" or "the local cache")."""
    hub = _hub()
    if hub.constants.is_offline_mode():
        return cached_branches(repo_id), "the local cache (HF_HUB_OFFLINE)"
    try:
        refs = hub.HfApi(token=token).list_repo_refs(repo_id)
    except hub.errors.RepositoryNotFoundError as exc:
        raise PhaseboardClientError(f"hf://{repo_id}: no such repo (or it is private)") from exc
    except Exception as exc:  # noqa: BLE001 - network down, Hub error: fall back to the cache
        cached = cached_branches(repo_id)
        if not cached:
            raise PhaseboardClientError(f"hf://{repo_id}: cannot list branches: {exc}") from exc
        return cached, f"the local cache (the Hub did not answer: {type(exc).__name__})"
    return sorted(b.name for b in refs.branches), "the Hub"


def select_revisions(names: list[str], patterns: str | None) -> list[str]:
    """Names matching any of the comma-separated globs or names (all when ``None``)."""
    if not patterns:
        return list(names)
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in wanted)]


def thin_steps(steps: list[int], every: int | None = None, max_n: int | None = None) -> list[int]:
    """Steps kept from a sorted series: every ``every``-th (first and last kept), then at
    most ``max_n`` log-spaced ones (the available step nearest each of ``max_n`` targets
    spaced evenly in log(step + 1), first and last always kept)."""
    s = sorted(set(steps))
    if every is not None and every > 1 and s:
        s = sorted({*s[::every], s[-1]})
    if max_n is not None and 0 < max_n < len(s):
        lo, hi = math.log1p(s[0]), math.log1p(s[-1])
        picks = {0, len(s) - 1}
        for k in range(max_n):
            target = lo + (hi - lo) * k / max(max_n - 1, 1)
            picks.add(min(range(len(s)), key=lambda i: abs(math.log1p(s[i]) - target)))
            if len(picks) >= max_n:
                break
        s = [s[i] for i in sorted(picks)]
    return s


def _download(repo_id: str, revision: str, token: str | None) -> tuple[Path, str]:
    """The revision's snapshot folder and its weights file (safetensors preferred)."""
    hub = _hub()
    try:
        folder = Path(
            hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=SAFETENSORS, token=token
            )
        )
        for name in ("model.safetensors", INDEX_NAME):
            if (folder / name).is_file():
                return folder, name
        folder = Path(
            hub.snapshot_download(repo_id, revision=revision, allow_patterns=TORCH_BIN, token=token)
        )
    except Exception as exc:  # noqa: BLE001 - offline miss, Hub error: this revision fails
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"cannot fetch revision {revision}: {first}") from exc
    if (folder / "pytorch_model.bin").is_file():
        return folder, "pytorch_model.bin"
    raise OSError(f"revision {revision} has no model.safetensors, index or pytorch_model.bin")


def _hub_config(repo_id: str, revision: str, token: str | None) -> dict[str, Any] | None:
    hub = _hub()
    try:
        path = hub.hf_hub_download(repo_id, "config.json", revision=revision, token=token)
        data = json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - no config: the run gets no task from it
        return None
    return data if isinstance(data, dict) and data.get("model_type") else None


def _hub_tokenizer(repo_id: str, revision: str, token: str | None) -> Path | None:
    """The revision's ``tokenizer.json`` (from the cache offline), or None if it has none."""
    hub = _hub()
    try:
        return Path(hub.hf_hub_download(repo_id, "tokenizer.json", revision=revision, token=token))
    except Exception:  # noqa: BLE001 - no tokenizer: the views show token ids
        return None


def ingest_hub(
    url: str,
    run_name: str,
    client: Phaseboard,
    *,
    revisions: str | None = None,
    every: int | None = None,
    max_n: int | None = None,
    step_regex: str | None = None,
    hf_token: str | None = None,
    task: str | None = None,
    task_config: dict[str, Any] | None = None,
    console: Console | None = None,
    data: Mapping[str, Path] | None = None,
    on_progress: Callable[[int, int, Item], None] | None = None,
    config: Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
) -> IngestReport:
    """Import the step branches of ``hf://ORG/NAME`` into ``run_name`` (module docstring).

    ``on_progress(done, total, item)`` is called after each revision (background jobs);
    ``config`` is added to the run's config; ``tokenizer`` is a ``tokenizer.json`` path or
    ``"bytes"`` (default: the repo's own).
    """
    console = console or Console()
    check_step_regex(step_regex)
    repo_id = parse_hub_url(url)
    names, origin = list_branches(repo_id, hf_token)
    chosen = select_revisions(names, revisions)
    console.print(f"hf://{repo_id}: {len(names)} branches from {origin}, {len(chosen)} selected")
    by_step: dict[int, str] = {}
    items: list[Item] = []
    for name in chosen:
        step = step_from_path(Path(name), step_regex)
        if step is None:
            detail = "no step in the name (use --step-regex)"
            items.append(Item("checkpoint", f"{repo_id}@{name}", None, "skipped", detail))
        elif step in by_step:
            detail = f"duplicate step (also {by_step[step]})"
            items.append(Item("checkpoint", f"{repo_id}@{name}", step, "skipped", detail))
        else:
            by_step[step] = name
    kept = set(thin_steps(list(by_step), every, max_n))
    for step, name in sorted(by_step.items()):
        status = "pending" if step in kept else "skipped"
        detail = "" if step in kept else "thinned out (--every / --max)"
        items.append(Item("checkpoint", f"{repo_id}@{name}", step, status, detail))
    if not kept:
        raise PhaseboardClientError(
            f"hf://{repo_id}: no branch with a step in its name matches {revisions or '*'!r} "
            f"(branches: {', '.join(names[:8]) or 'none'}{' ...' if len(names) > 8 else ''})"
        )

    hf_config = _hub_config(repo_id, by_step[max(kept)], hf_token)
    task, task_config = choose_task(f"hf://{repo_id}", hf_config, task, task_config, console)
    task_config = with_tokenizer_flag(tokenizer, task, task_config)
    run = client.run(
        run_name,
        task=task,
        task_config=task_config,
        config={"source": f"hf://{repo_id}", **model_summary(hf_config), **(config or {})},
        status="imported",
    )
    report = IngestReport(run.id, run.url)
    _ingest_datasets(run, data or {}, report)
    last = by_step[max(kept)]
    if tokenizer is None:
        found, where = _hub_tokenizer(repo_id, last, hf_token), f"{repo_id}@{last}/tokenizer.json"
    elif str(tokenizer) != "bytes":
        found, where = Path(tokenizer), str(tokenizer)
    else:
        found = None
    if found is not None:
        upload_tokenizer(run, report, Source(found.parent), found.name, where)
    report.items.extend(items)

    def open_revision(item: Item) -> IO[bytes]:
        revision = item.path.split("@", 1)[1]
        folder, weights = _download(repo_id, revision, hf_token)
        if weights == INDEX_NAME:
            merged = MergedSafetensors(folder / INDEX_NAME)
            item.size = merged.size
            return merged  # type: ignore[return-value]
        item.size = (folder / weights).stat().st_size
        return (folder / weights).open("rb")

    pending = [i for i in items if i.status == "pending"]
    done = [0]

    def progress(item: Item) -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], len(pending), item)

    upload_items(run, items, open_revision, console, on_done=progress)
    note_task(run, report)
    mark_imported(run)
    return report
