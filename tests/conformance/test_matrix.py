"""Every lens on every task, on a run whose checkpoints arrive one at a time.

The matrix is parametrised from the lens registry and ``list_tasks()``: a new lens or task
joins it by existing. Each case's run grows through the real job path (API uploads, the
local worker pool, SQLite; one case on PostgreSQL too), and for each lens:

- no job of it ever fails;
- after the first checkpoint, a lens that needs more checkpoints waits in a visible state
  ("waiting for a 2nd checkpoint", in the API and on the run page), never fails;
- at the end it is done, with a result for every checkpoint (per-checkpoint lenses) or a
  result over all of them (run lenses), or it says once, as a state, why it does not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from phaseboard.server.lenses import all_lenses, get_lens
from tests.conformance.cases import STEPS, case_ids, get_case
from tests.conformance.growing_run import Outcome, grow

pytestmark = pytest.mark.slow  # minutes on two cores; the suite runs it (make test, CI)

LENSES = [lens.name for lens in all_lenses(internal=False)]
_grown: dict[str, Outcome | BaseException] = {}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``grown(case_id)``: the case's grown run, grown once per test session."""

    def get(case_id: str) -> Outcome:
        if case_id not in _grown:
            home = tmp_path_factory.mktemp(case_id.replace(":", "-"))
            try:
                _grown[case_id] = grow(get_case(case_id), home)
            except BaseException as exc:  # every lens of the case reports the same failure
                _grown[case_id] = exc
        found = _grown[case_id]
        if isinstance(found, BaseException):
            raise AssertionError(f"growing the {case_id} run failed: {found!r}") from found
        return found

    return get


def _jobs(snapshot: Any, lens: str) -> list[dict[str, Any]]:
    return [j for j in snapshot.jobs if j["kind"] == lens]


def _failures(snapshot: Any, lens: str) -> list[tuple[Any, ...]]:
    return [(j["id"], j["error"]) for j in _jobs(snapshot, lens) if j["state"] == "failed"]


@pytest.mark.parametrize("lens", LENSES)
@pytest.mark.parametrize("case_id", case_ids())
def test_lens_runs_as_checkpoints_arrive_or_says_once_why_not(
    grown: Any, case_id: str, lens: str
) -> None:
    outcome = grown(case_id)
    first, final = outcome.after_first, outcome.final
    declared = get_lens(lens)
    assert not _failures(first, lens), f"{lens} failed after the first checkpoint"
    assert not _failures(final, lens), f"{lens} failed on {case_id}"

    state = final.states[lens]
    assert state["state"] in ("done", "not_applicable"), state
    if state["state"] == "not_applicable":
        assert state["message"], "a lens that does not apply says why"
        return

    results = [r for r in final.results if r["kind"] == lens]
    assert results, f"{lens} is done but stored no result"
    if declared.scope == "checkpoint":
        assert sorted({r["step"] for r in results}) == list(STEPS)
    elif declared.rerun == "checkpoints":  # the newest result read every checkpoint
        newest = max(results, key=lambda r: r["id"])["values"]
        assert newest["steps"] == list(STEPS)


@pytest.mark.parametrize("lens", [n for n in LENSES if get_lens(n).min_checkpoints > 1])
@pytest.mark.parametrize("case_id", case_ids())
def test_lens_needing_more_checkpoints_waits_visibly_after_the_first(
    grown: Any, case_id: str, lens: str
) -> None:
    first = grown(case_id).after_first
    state = first.states[lens]
    if state["state"] == "not_applicable":
        return
    assert state["state"] == "waiting", state
    assert state["message"] == "waiting for a 2nd checkpoint"
    jobs = _jobs(first, lens)
    assert jobs and all(j["state"] == "waiting" for j in jobs), jobs
    assert "waiting for a 2nd checkpoint" in first.page


@pytest.mark.postgres
def test_a_growing_run_on_postgresql_runs_every_lens(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tests.conftest import _truncate_all

    url = request.getfixturevalue("_postgres_migrated")
    _truncate_all(url)
    outcome = grow(get_case("dln"), tmp_path, database_url=url)
    first, final = outcome.after_first, outcome.final
    for lens in LENSES:
        assert not _failures(first, lens) and not _failures(final, lens), lens
        assert final.states[lens]["state"] in ("done", "not_applicable"), final.states[lens]
    assert first.states["learning_order"]["state"] == "waiting"
