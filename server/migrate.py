"""Alembic, driven from code: ``phaseboard migrate`` and ``phaseboard up`` upgrade to head."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from phaseboard.server.settings import REPO_ROOT, Settings


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to ``revision`` (creates the SQLite file's directory if needed)."""
    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.database_url), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings.database_url), revision)
