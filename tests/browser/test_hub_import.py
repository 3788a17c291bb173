"""The upload card's "Import from the Hub": a researcher types a repo and a revision pattern,
the import runs in the background with progress, and the checkpoint table fills in, the
mislabelled branch flagged (offline Hub cache: ``tests.test_ingest_hub``)."""

from __future__ import annotations

import httpx

from tests.browser.conftest import ARTIFACTS, PHONE
from tests.test_ingest_hub import REPO, hf_home, hub_server  # noqa: F401 - fixtures


def test_import_from_the_hub_card_shows_progress_and_fills_the_table(
    browser,
    hub_server: str,  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    rid = httpx.post(f"{hub_server}/api/runs", json={"name": "card-import"}).json()["id"]
    for viewport, name in (({"width": 1280, "height": 900}, "desktop"), (PHONE, "phone")):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        page.goto(f"{hub_server}/runs/{rid}")
        if name == "desktop":
            page.fill("#hub-repo", REPO)
            assert page.input_value("#hub-revisions") == "step*"
            page.click("#hub-import button[type=submit]")
            item = page.locator("#hub-import-list .upload-item").first
            item.locator(".upload-msg").filter(has_text="4 of 4 revisions").wait_for(timeout=90_000)
            page.wait_for_selector("#hub-import-list .upload-item.ok", timeout=30_000)
            text = item.inner_text()
            assert "1 with the same weights as a later step" in text
            page.wait_for_selector("#checkpoints [data-duplicate-of='300']", timeout=30_000)
        else:
            page.locator("#hub-import").scroll_into_view_if_needed()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"page overflows at {PHONE['width']} px: {width}"
        page.screenshot(path=str(ARTIFACTS / f"hub-import-{name}.png"), full_page=True)
        assert not errors, errors
        context.close()
