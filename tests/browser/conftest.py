"""Playwright on Debian's Chromium against a real uvicorn server with seeded rows.

Chromium comes from the system (``/usr/bin/chromium``; ``playwright install`` cannot download
browsers here). Without it — or without the playwright package — these tests skip loudly.
Screenshots go to ``tests/browser/artifacts/`` (gitignored): look at them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from phaseboard.server.db import Database
from phaseboard.server.settings import Settings
from tests.browser.seed import Seeded, seed_runs
from tests.conftest import service_missing
from tests.live_server import serve

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = os.environ.get("PHASEBOARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        service_missing("playwright (python package)", str(exc))
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        service_missing(f"Chromium at {CHROMIUM}", "executable not found")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class LiveSite:
    def __init__(self, url: str, db: Database, seeded: Seeded) -> None:
        self.url = url
        self.db = db
        self.seeded = seeded


def _site(tmp_path_factory: pytest.TempPathFactory, **kwargs: object) -> Iterator[LiveSite]:
    home = tmp_path_factory.mktemp("site")
    with serve(home, **kwargs) as url:  # type: ignore[arg-type]
        db = Database(Settings(home=home))
        seeded = seed_runs(db)
        try:
            yield LiveSite(url, db, seeded)
        finally:
            db.dispose()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSite]:
    """A seeded server whose writes need a token (reads, and share links, stay open)."""
    yield from _site(tmp_path_factory, token="s3cret")


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport=DESKTOP)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # A Content-Security-Policy violation is a console error, not a page error: count it too.
    pg.on(
        "console",
        lambda msg: (
            errors.append("CSP: " + msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    pg.js_errors = errors
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Full-page screenshot at the current viewport into the artifacts folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
