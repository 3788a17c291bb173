"""Migrations: upgrade builds exactly the ORM schema, downgrade undoes it, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from phaseboard.server.migrate import downgrade, upgrade
from phaseboard.server.models import Base


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def test_migrated_schema_matches_the_models(settings) -> None:
    engine = _engine(settings.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"
    assert {t.name for t in Base.metadata.sorted_tables} <= tables


def test_downgrade_to_base_and_upgrade_again(settings) -> None:
    downgrade(settings, "base")
    engine = _engine(settings.database_url)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(settings)
    assert "metric_points" in sa.inspect(engine).get_table_names()
    engine.dispose()
