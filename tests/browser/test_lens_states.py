"""Lens states on the run page, in a real Chromium: a run with one checkpoint so far, whose
run lenses wait for a second one, and a lens that does not apply to the run's task.

Job rows are written as the planner and the worker would have written them (pages only
read rows).
"""

from __future__ import annotations

import pytest

from phaseboard.server.models import Checkpoint, Job, Result, Run
from tests.browser.conftest import PHONE, shoot

pytestmark = pytest.mark.browser

REASON = "this task declares no data subsets to compare"


def _seed_growing_run(site) -> int:  # type: ignore[no-untyped-def]
    """One checkpoint, its metrics and LLC done, two run lenses waiting, one not applicable."""
    with site.db.session() as s:
        run = Run(name="growing-run", task="tms", task_config={"num_samples": 256})
        s.add(run)
        s.flush()
        ckpt = Checkpoint(
            run_id=run.id, step=0, sha256="f" * 64, size=10, format="safetensors", n_params=4
        )
        s.add(ckpt)
        s.flush()

        def job(kind: str, state: str, message: str = "", checkpoint: int | None = None) -> Job:
            row = Job(
                run_id=run.id,
                checkpoint_id=checkpoint,
                kind=kind,
                config={},
                config_hash="0" * 64,
                dedupe_key=f"{run.id}:{checkpoint or '-'}:{kind}:seed",
                state=state,
                progress_msg=message,
            )
            s.add(row)
            s.flush()
            return row

        for kind in ("metrics", "llc"):
            done = job(kind, "done", "done", ckpt.id)
            s.add(
                Result(
                    job_id=done.id,
                    run_id=run.id,
                    checkpoint_id=ckpt.id,
                    step=0,
                    kind=kind,
                    values={"train_loss": 0.7} if kind == "metrics" else {"mean": 3.0, "std": 0.2},
                )
            )
        job("essential_dynamics", "waiting", "waiting for a 2nd checkpoint")
        job("learning_order", "waiting", "waiting for a 2nd checkpoint")
        job("susceptibilities", "not_applicable", REASON)
        return run.id


def test_run_page_says_which_lenses_wait_and_which_do_not_apply(site, page) -> None:
    run_id = _seed_growing_run(site)
    page.goto(f"{site.url}/runs/{run_id}")
    page.wait_for_selector("#lenses[data-loaded='true']", timeout=20_000)

    waiting = (
        "Waiting for a 2nd checkpoint. It runs on its own once the run has enough checkpoints."
    )
    assert page.inner_text("#lenses-status") == waiting
    assert page.inner_text("#order-status") == waiting
    assert page.get_attribute("#lenses-status", "data-state") == "waiting"
    assert page.locator("#card-ed12").is_hidden()  # no empty plot frames

    states = page.locator("#jobs .lens-states")
    ed = states.locator("li[data-lens='essential_dynamics']")
    assert ed.get_attribute("data-state") == "waiting"
    assert "waiting for a 2nd checkpoint" in ed.inner_text()
    na = states.locator("li[data-lens='susceptibilities']")
    assert na.get_attribute("data-state") == "not_applicable"
    assert "not applicable" in na.inner_text() and REASON in na.inner_text()
    assert states.locator("li[data-lens='llc']").get_attribute("data-state") == "done"
    assert not page.locator("#jobs .job.failed").count()  # nothing is shown as a failure

    page.locator("#jobs").scroll_into_view_if_needed()
    shoot(page, "lens-states-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(400)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone"
    page.locator("#jobs").scroll_into_view_if_needed()
    shoot(page, "lens-states-phone")
