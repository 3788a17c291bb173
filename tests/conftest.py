"""Shared fixtures: real SQLite and PostgreSQL stores, real Redis, app clients.

PostgreSQL/Redis come from ``PHASEBOARD_TEST_POSTGRES_URL`` / ``PHASEBOARD_TEST_REDIS_URL``
(defaults: the local services). A missing service skips its tests loudly — and fails them
when ``CI=true``, where every service must be there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from phaseboard.server.app import create_app
from phaseboard.server.migrate import upgrade
from phaseboard.server.settings import Settings

POSTGRES_URL = os.environ.get(
    "PHASEBOARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("PHASEBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["sqlite", "postgres"]
_missing_services: list[str] = []


def service_missing(name: str, why: str) -> None:
    """Fail in CI, otherwise skip loudly (and repeat the warning in the summary)."""
    message = f"{name} is not reachable ({why}); its tests did NOT run"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    _missing_services.append(message)
    pytest.skip(f"LOUD SKIP: {message}")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    for message in sorted(set(_missing_services)):
        terminalreporter.write_line(f"WARNING: {message}", red=True, bold=True)


def _pg_admin_url() -> sa.URL:
    url = sa.make_url(POSTGRES_URL)
    return url.set(drivername="postgresql+psycopg")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this test session (dropped at the end)."""
    admin = _pg_admin_url()
    try:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "absent"
        service_missing("PostgreSQL at " + POSTGRES_URL, str(exc).splitlines()[0])
    name = f"pb_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(scope="session")
def _postgres_migrated(postgres_server_url: str) -> str:
    upgrade(Settings(database_url=postgres_server_url, home=Path("/tmp")))
    return postgres_server_url


def _truncate_all(url: str) -> None:
    from phaseboard.server.models import Base

    engine = sa.create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of the parametrised backend."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'phaseboard.db'}"
        upgrade(Settings(database_url=url, home=tmp_path))
        return url
    url = request.getfixturevalue("_postgres_migrated")
    _truncate_all(url)
    return url


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    """Settings on the test database and a temp blob dir; keyword overrides allowed."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "home": tmp_path / "home",
            "database_url": database_url,
            "storage_dir": tmp_path / "blobs",
            "queue": "none",
            "redis_url": REDIS_URL,
            # Starlette's TestClient sends ``Host: testserver``; the default answers only to
            # loopback names and the configured URL, so tests name it like an operator would.
            "allowed_hosts": "testserver",
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """An API client on an app without workers (queue "none")."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        service_missing("Redis at " + REDIS_URL, str(exc).splitlines()[0])
    return REDIS_URL
