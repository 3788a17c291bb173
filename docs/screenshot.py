"""Take the README's run-page screenshot from a live server (Playwright + Debian chromium).

    phaseboard up &                       # a server with a finished `phaseboard demo` run
    .venv/bin/python docs/screenshot.py --url http://127.0.0.1:8765 --run 1

Waits until the run's jobs are done and the plots have drawn, then saves the page at desktop
width from its top down to the restricted-LLC card (``--until`` another element id, or ``""``
for the full page) to docs/run-page.png (``--out`` to change).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def wait_for_jobs(url: str, run_id: int, timeout_s: float) -> None:
    """Until no job of the run is queued or running (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = httpx.get(f"{url}/api/jobs", params={"run_id": run_id, "limit": 1}).json()
        if not counts["counts"].get("queued") and not counts["counts"].get("running"):
            return
        time.sleep(5)
    raise SystemExit(f"jobs of run {run_id} still running after {timeout_s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:8765")
    ap.add_argument("--run", type=int, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("run-page.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--until", default="card-restricted", help="element id the shot ends at")
    args = ap.parse_args()
    wait_for_jobs(args.url, args.run, args.timeout)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.goto(f"{args.url}/runs/{args.run}", wait_until="networkidle")
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        page.wait_for_timeout(1500)  # the last plots and lens cards
        clip = None
        if args.until:
            bottom = page.evaluate(
                "(id) => document.getElementById(id).getBoundingClientRect().bottom + scrollY",
                args.until,
            )
            clip = {"x": 0, "y": 0, "width": args.width, "height": bottom + 16}
        page.screenshot(path=str(args.out), full_page=True, clip=clip)
        browser.close()
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
