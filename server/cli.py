"""The ``phaseboard`` command: ``up | migrate | worker | ingest | export | demo``."""

from __future__ import annotations

import typer
from rich.console import Console

from server.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Phaseboard: training trajectories, LLC and phases.")
console = Console()


@app.command()
def migrate() -> None:
    """Upgrade the database to the newest schema."""
    from server.migrate import upgrade

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

    from server.app import create_app
    from server.migrate import upgrade

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    upgrade(settings)
    console.print(f"Phaseboard on [bold]http://{settings.host}:{settings.port}[/bold]")
    console.print(f"  database {settings.database_url}\n  blobs    {settings.storage_dir}")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


# --- worker command (server.jobs) ---------------------------------------------------------

# --- ingest / export / demo commands (researcher workflow) --------------------------------
