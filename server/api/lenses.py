"""The lenses: what is registered, and a run's lens results and states in one read.

``GET /lenses`` lists the lens registry (``server.lenses``). ``GET /runs/{id}/lenses`` gives
the newest result of every run-scope lens the run page draws, the progress measures, the
boundaries, and every lens's state on the run (waiting for checkpoints, not applicable,
running, failed, done: ``server.lenses._states``). Run-scope lenses store one result row per
rerun; pages want the newest one only, so this reads just that row instead of the whole
history ``/runs/{id}/results`` returns.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Query, Request

from phaseboard.server import read
from phaseboard.server.deps import RunDep, SessionDep
from phaseboard.server.errors import BadInput, NotFound
from phaseboard.server.lenses import all_lenses
from phaseboard.server.lenses._registry import page_views
from phaseboard.server.lenses._states import lens_states
from phaseboard.server.models import Run
from phaseboard.server.read import boundaries, newest_result, progress_series

router = APIRouter(tags=["lenses"])


@router.get("/lenses")
def list_lenses() -> dict[str, Any]:
    """Every lens a run can be given (``POST /runs/{id}/analyses {"lenses": [...]}``): its
    scope, lane, the checkpoints it needs, whether it is automatic, and what it computes."""
    return {
        "lenses": [
            {
                "name": lens.name,
                "title": lens.title,
                "description": lens.description,
                "scope": lens.scope,
                "lane": lens.lane,
                "min_checkpoints": lens.min_checkpoints,
                "auto": lens.auto,
                "rerun": lens.rerun,
                "feeds_phases": lens.feeds_phases,
            }
            for lens in all_lenses(internal=False)
        ]
    }


@router.get("/runs/{run_id}/lenses")
def run_lenses(run: RunDep, session: SessionDep) -> dict[str, Any]:
    """``{"run_id", "<lens>": newest values or null (each run-scope lens in the page's lens
    section), ..., "progress": {name: series}, "boundaries": [...], "states": {lens:
    {"state", "message", "title", "scope", "counts"}}}``."""
    out: dict[str, Any] = {"run_id": run.id}
    for lens in page_views():
        if lens.scope == "run":
            out[lens.name] = newest_result(session, run.id, lens.name)
    out["progress"] = progress_series(session, run.id)
    out["boundaries"] = boundaries(session, run.id)
    out["states"] = lens_states(session, run.id)
    return out


@router.get("/runs/{run_id}/learning_order/heatmap")
def learning_order_heatmap(
    run: RunDep,
    session: SessionDep,
    request: Request,
    max_examples: int = Query(200, ge=1, le=5000),
) -> dict[str, Any]:
    """Per-example loss (examples sorted by learned-at step x checkpoints) for the heatmap.

    Reads the newest learning-order result's float16 array; at most ``max_examples`` rows,
    evenly picked along the learned-at order so the picture keeps its shape.
    """
    import numpy as np

    values = newest_result(session, run.id, "learning_order")
    if values is None:
        raise NotFound(f"run {run.id} has no learning-order result yet")
    store = request.app.state.store
    with store.open_path(values["losses_blob"]).open("rb") as fh:  # NotFound if gone
        losses = np.load(fh, allow_pickle=False)  # (checkpoints, examples)
    order = values["order"]
    pick = np.unique(
        np.linspace(0, len(order) - 1, min(max_examples, len(order))).round().astype(int)
    )
    rows = [order[i] for i in pick]
    z = losses[:, rows].T.astype(float)  # (examples, checkpoints)
    return {
        "run_id": run.id,
        "steps": values["steps"],
        "examples": rows,
        "learned_at": [values["learned_at"][i] for i in rows],
        "threshold": values["threshold"],
        "z": [[round(v, 4) if np.isfinite(v) else None for v in row] for row in z.tolist()],
    }


@router.get("/learning_order/agreement")
def learning_order_agreement(
    session: SessionDep, runs: str = Query(..., description="comma-separated run ids")
) -> dict[str, Any]:
    """Spearman rank correlation of learned-at steps for every pair of the given runs.

    The one lens statistic of a *pair* of runs, so it has no result row of its own: it is
    read off the two runs' learning-order results here (``analysis.learning_order``).
    Pairs whose probe examples differ (task, task config, split or size) are listed in
    ``skipped`` with the reason instead.
    """
    import numpy as np

    from phaseboard.analysis.learning_order import rank_agreement

    parts = [p.strip() for p in runs.split(",")]
    # ASCII digits only (str.isdigit accepts "²"), and ids a database integer can hold
    ids = list(dict.fromkeys(int(p) for p in parts if re.fullmatch(r"[0-9]{1,9}", p)))[:12]
    if len(ids) < 2:
        raise BadInput("give at least two run ids, e.g. runs=1,2")
    info: dict[int, tuple[Run, dict[str, Any] | None]] = {}
    for run_id in ids:
        info[run_id] = (
            read.get_run(session, run_id),
            newest_result(session, run_id, "learning_order"),
        )
    pairs, skipped = [], []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            (ra, va), (rb, vb) = info[a], info[b]
            if va is None or vb is None:
                skipped.append({"a": a, "b": b, "reason": "no learning-order result yet"})
                continue
            same = (ra.task, ra.task_config, va["split"], va["n_examples"]) == (
                rb.task,
                rb.task_config,
                vb["split"],
                vb["n_examples"],
            )
            if not same:
                skipped.append({"a": a, "b": b, "reason": "different probe examples"})
                continue
            la = np.array([np.nan if v is None else v for v in va["learned_at"]], dtype=float)
            lb = np.array([np.nan if v is None else v for v in vb["learned_at"]], dtype=float)
            agree = rank_agreement(la, lb)
            rho = agree.rho if np.isfinite(agree.rho) else None
            pairs.append({"a": a, "b": b, "rho": rho, "n": agree.n, "of": len(la)})
    names = {i: info[i][0].name for i in ids}
    return {"runs": [{"id": i, "name": names[i]} for i in ids], "pairs": pairs, "skipped": skipped}
