"""The ``phaseboard`` command: ``up | migrate | worker | ingest | export | demo | gc | sync``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from phaseboard.server.settings import Settings

if TYPE_CHECKING:
    from phaseboard import Phaseboard

app = typer.Typer(no_args_is_help=True, help="Phaseboard: training trajectories, LLC and phases.")
console = Console()


@app.command()
def migrate() -> None:
    """Upgrade the database to the newest schema."""
    from phaseboard.server.migrate import upgrade

    settings = Settings()
    upgrade(settings)
    console.print(f"[green]database at head[/green]: {settings.database_url}")


@app.command()
def up(
    host: str | None = typer.Option(None, help="Interface to bind (default from settings)."),
    port: int | None = typer.Option(None, help="Port (default 8765)."),
) -> None:
    """Migrate, then serve the dashboard with the embedded defaults (SQLite, local workers)."""
    import uvicorn

    from phaseboard.server.migrate import upgrade

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    from phaseboard.server.app import create_app

    upgrade(settings)
    console.print(f"Phaseboard on [bold]http://{settings.host}:{settings.port}[/bold]")
    console.print(f"  database {settings.database_url}\n  blobs    {_blob_location(settings)}")
    _hint_demo_if_empty(settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


# --- worker command (server.jobs) ---------------------------------------------------------


@app.command()
def worker(
    device: str = typer.Option("cpu", help="Device this worker runs jobs on: cpu, cuda:0, ..."),
    concurrency: int = typer.Option(1, help="Jobs run at once by this worker (processes)."),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
    lane: str = typer.Option(
        "all", help="all | fast (only cheap jobs: metrics, phases) | heavy (only LLC jobs)."
    ),
) -> None:
    """Run a Celery worker (PHASEBOARD_QUEUE=celery) taking only jobs it can run on DEVICE."""
    settings = Settings()
    from phaseboard.server.jobs.celery_app import run_worker, worker_queues
    from phaseboard.server.jobs.lanes import LANES

    if lane not in LANES:
        raise typer.BadParameter(f"lane must be one of {', '.join(LANES)}")
    console.print(
        f"worker on [bold]{device}[/bold] queues {', '.join(worker_queues(device, lane))}\n"
        f"  broker   {settings.redis_url}\n  database {settings.database_url}"
    )
    run_worker(settings, device, concurrency=concurrency, loglevel=loglevel, lane=lane)


# --- ingest / export / demo commands (researcher workflow) --------------------------------


def _blob_location(settings: Settings) -> str:
    return settings.blob_url if "://" in settings.blob_url else str(settings.storage_dir)


def _hint_demo_if_empty(settings: Settings) -> None:
    """On an empty store, point at ``phaseboard demo`` (called by ``up``)."""
    from phaseboard.server.commands.demo import store_is_empty

    if store_is_empty(settings):
        console.print("No runs yet — try [bold]phaseboard demo[/bold] in another terminal.")


@contextmanager
def _client_errors() -> Iterator[None]:
    """A server's refusal or absence becomes one red line and exit status 1, not a trace."""
    from phaseboard import PhaseboardClientError

    try:
        yield
    except PhaseboardClientError as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(1) from exc


@contextmanager
def _connected(url: str | None, token: str | None) -> Iterator[Phaseboard]:
    """A client for ``--url``/``--token``, closed after. The URL defaults to ``PHASEBOARD_URL``
    as a training script's client reads it, else this machine's server; the token to
    ``PHASEBOARD_API_TOKEN``."""
    from phaseboard import Phaseboard
    from phaseboard._env import env_url

    settings = Settings()
    client = Phaseboard(url or env_url() or settings.base_url, token=token or settings.api_token)
    try:
        with _client_errors():
            yield client
    finally:
        client.close()


@app.command()
def ingest(
    path: str = typer.Argument(
        ...,
        help="A directory of checkpoints (and TensorBoard events), any fsspec URL "
        "(s3://bucket/prefix, gs://...), or hf://ORG/NAME (one Hub branch per step).",
    ),
    run: str = typer.Option(..., "--run", help="Run name (created if it does not exist)."),
    task: str | None = typer.Option(None, help="Task name, e.g. modular_addition."),
    task_config: str | None = typer.Option(None, help="Task config as JSON."),
    url: str | None = typer.Option(None, help="Server URL (default: the local one)."),
    token: str | None = typer.Option(None, help="API token (default PHASEBOARD_API_TOKEN)."),
    step_regex: str | None = typer.Option(
        None, help="Regex whose group 1 is the step (of a path, or of an hf:// branch name)."
    ),
    data: list[str] = typer.Option(
        [], "--data", help="NAME=FILE token data (train, test, or a subset); repeatable."
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="A tokenizer.json the views decode token ids with (default: the one beside the "
        "newest checkpoint, or the hf:// repo's), or 'bytes' for a byte-level vocabulary "
        "(token id i is byte i).",
    ),
    revisions: str | None = typer.Option(
        None, help="hf:// only: branches to import, globs or names, comma separated ('step*')."
    ),
    every: int | None = typer.Option(
        None, min=1, help="hf:// only: keep every K-th revision in step order (and the last)."
    ),
    max_revisions: int | None = typer.Option(
        None, "--max", min=2, help="hf:// only: at most N revisions, log-spaced over the steps."
    ),
    hf_token: str | None = typer.Option(
        None, help="hf:// only: Hub token for a private repo (default: HF_TOKEN, the Hub login)."
    ),
    hparam: list[str] = typer.Option(
        [],
        "--config",
        help="KEY=VALUE hyperparameter for the run's config (JSON values: 0.01, 42, true, "
        '"adamw"; else a string), e.g. the weight decay and seed no file records; repeatable.',
    ),
) -> None:
    """Import checkpoints into a run; resumable (steps the server has are skipped)."""
    import json
    from pathlib import Path

    from phaseboard.server.commands.ingest_dir import ingest_directory, print_summary

    try:
        config = json.loads(task_config) if task_config else None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--task-config") from exc
    datasets: dict[str, Path] = {}
    for spec in data:
        name, sep, file = spec.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise typer.BadParameter(f"expected NAME=FILE, got {spec!r}", param_hint="--data")
        if not Path(file).is_file():
            raise typer.BadParameter(f"{file} is not a file", param_hint="--data")
        datasets[name.strip()] = Path(file)
    if tokenizer is not None and tokenizer != "bytes" and not Path(tokenizer).is_file():
        raise typer.BadParameter(
            f"{tokenizer} is not a file (a tokenizer.json, or 'bytes')", param_hint="--tokenizer"
        )
    run_config: dict[str, object] = {}
    for spec in hparam:
        key, sep, raw = spec.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {spec!r}", param_hint="--config")
        try:
            run_config[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            run_config[key.strip()] = raw
    hub = path.startswith("hf://")
    if not hub and (revisions or every or max_revisions or hf_token):
        raise typer.BadParameter("--revisions, --every, --max and --hf-token need an hf:// path")
    with _connected(url, token) as client:
        if hub:
            from phaseboard.server.commands.ingest_hub import ingest_hub

            report = ingest_hub(
                path,
                run,
                client,
                revisions=revisions,
                every=every,
                max_n=max_revisions,
                step_regex=step_regex,
                hf_token=hf_token,
                task=task,
                task_config=config,
                console=console,
                data=datasets,
                config=run_config,
                tokenizer=tokenizer,
            )
        else:
            report = ingest_directory(
                path,
                run,
                client,
                task=task,
                task_config=config,
                step_regex=step_regex,
                console=console,
                data=datasets,
                config=run_config,
                tokenizer=tokenizer,
            )
    print_summary(report, console)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def export(
    run: str = typer.Argument(..., help="Run name or id."),
    format: str = typer.Option("csv", "--format", help="csv or json."),
    out: str | None = typer.Option(None, "--out", help="Output file (default: stdout)."),
    url: str | None = typer.Option(None, help="Server URL (default: the local one)."),
    token: str | None = typer.Option(None, help="API token (default PHASEBOARD_API_TOKEN)."),
) -> None:
    """Write a run's metric series and analysis results as CSV or JSON."""
    import sys
    from pathlib import Path

    from phaseboard.server.commands.export import export_run

    with _connected(url, token) as client:
        text = export_run(client, run, format)
    if out:
        Path(out).write_text(text)
        console.print(f"wrote {out}", highlight=False)
    else:
        sys.stdout.write(text)


@app.command()
def demo(
    quick: bool = typer.Option(False, help="A sub-minute version (fewer steps, smaller p)."),
    url: str | None = typer.Option(None, help="Server URL (default: the local one)."),
    token: str | None = typer.Option(None, help="API token (default PHASEBOARD_API_TOKEN)."),
    name: str | None = typer.Option(None, help="Run name (default: grokking-demo-<time>)."),
    serve: bool = typer.Option(True, help="Keep a server started by the demo running."),
) -> None:
    """Grok modular addition on this CPU, log it to the server, queue LLC jobs."""
    settings = Settings()
    from phaseboard.server.commands.demo import run_demo

    with _client_errors():
        run_demo(
            url or settings.base_url,
            quick=quick,
            token=token or settings.api_token,
            name=name,
            console=console,
            settings=settings,
            serve=serve,
        )


@app.command()
def gc(
    min_age_hours: float = typer.Option(
        1.0,
        help="Spare lens results written more recently (on S3: every blob). Uploads in "
        "flight are always spared; other unreferenced blobs go whatever their age.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report, remove nothing."),
) -> None:
    """Free space: remove blobs nothing references (left by deleted runs), on any backend."""
    from phaseboard.server.blob_gc import collect_garbage
    from phaseboard.server.db import Database
    from phaseboard.server.store.blobs import open_blob_store

    settings = Settings()
    settings.ensure_dirs()
    db = Database(settings)
    try:
        report = collect_garbage(db, open_blob_store(settings), min_age_hours * 3600, dry_run)
    finally:
        db.dispose()
    verb = "would remove" if dry_run else "removed"
    console.print(
        f"{verb} {len(report.removed)} unreferenced blob(s), "
        f"{report.bytes_freed / 1e6:.1f} MB; kept {report.referenced} referenced, "
        f"{report.kept_recent} in flight or younger than {min_age_hours:g} h; "
        f"{report.temp_files_removed} stale upload temp file(s) removed"
    )


@app.command()
def sync(
    path: str = typer.Argument(
        "~/.phaseboard/spool", help="A run's spool directory, or a folder of them."
    ),
    url: str | None = typer.Option(None, help="Server URL (default: the local one)."),
    token: str | None = typer.Option(None, help="API token (default PHASEBOARD_API_TOKEN)."),
) -> None:
    """Upload runs logged offline (or while the server was away); each exactly once."""
    from pathlib import Path

    from phaseboard import find_spools, sync_spool

    spools = find_spools(Path(path))
    if not spools:
        console.print(f"[yellow]no spooled runs under {path}[/yellow]")
        raise typer.Exit(1)
    with _connected(url, token) as client:
        for spool in spools:
            result = sync_spool(client, spool)
            name = spool.meta.get("name", spool.path.name)
            if result.skipped:
                console.print(f"{name}: skipped ({result.skipped})", highlight=False)
                continue
            for d in result.dropped:
                console.print(f"[yellow]dropped point[/yellow] {d}", highlight=False)
            state = "complete" if result.complete else "uploaded so far (run not finished)"
            console.print(
                f"{name}: {result.points} points, {result.checkpoints} checkpoints, {state}; "
                f"{client.url}/runs/{result.run_id}",
                highlight=False,
            )
