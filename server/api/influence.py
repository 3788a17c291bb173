"""Reads of the ``influence`` and ``susceptibilities`` lens results for their views.

The jobs store everything (``server.lenses.influence``, ``server.lenses.susceptibilities``):
these routes only pick slices of the newest result's arrays, so the page draws one probe
example's influences or one checkpoint's token clusters without fetching the whole
trajectory. ``/runs/{id}/lenses`` already carries the small inline parts (steps, the
susceptibility matrices, texts).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from phaseboard.server import read
from phaseboard.server.deps import SessionDep
from phaseboard.server.errors import BadInput, NotFound
from phaseboard.server.read import newest_result
from phaseboard.server.schemas import DbId

router = APIRouter(tags=["lenses"])


def _num(x: Any) -> float | None:
    import math

    x = float(x)
    return round(x, 5) if math.isfinite(x) else None


def _newest(session: SessionDep, run_id: int, kind: str) -> dict[str, Any]:
    read.get_run(session, run_id)
    values = newest_result(session, run_id, kind)
    if values is None or not values.get("data_blob"):
        raise NotFound(f"run {run_id} has no {kind} result yet")
    return values


def _step_index(values: dict[str, Any], step: int | None) -> int:
    """Index of ``step`` among the result's steps (None: the last)."""
    steps = values["steps"]
    if step is None:
        return len(steps) - 1
    if step not in steps:
        raise BadInput(f"step {step} is not one of this result's checkpoints: {steps}")
    return steps.index(step)


def _arrays(request: Request, values: dict[str, Any]) -> dict[str, Any]:
    from phaseboard.server.lenses._sampled import read_npz

    return read_npz(request.app.state.store, values["data_blob"])  # NotFound if gone


@router.get("/runs/{run_id}/influence/probe/{probe}")
def influence_of_probe(
    run_id: DbId,
    probe: int,
    session: SessionDep,
    request: Request,
    step: int | None = Query(None, description="checkpoint step (default: the last)"),
) -> dict[str, Any]:
    """For probe example ``probe``: at ``step`` its most and least influential training
    examples (correlation over posterior draws, standard error from the chain spread), and
    every step's influence of those same training examples, to follow them over training."""
    values = _newest(session, run_id, "influence")
    if not 0 <= probe < len(values["probe_texts"]):
        raise BadInput(f"probe must be in [0, {len(values['probe_texts'])}), got {probe}")
    k = _step_index(values, step)
    data = _arrays(request, values)
    corr, se = data["corr"][:, probe], data["se"][:, probe]  # (steps, train)

    def listed(indices: Any) -> list[dict[str, Any]]:
        return [
            {
                "train": int(j),
                "text": values["train_texts"][int(j)],
                "influence": _num(corr[k, j]),
                "se": _num(se[k, j]),
            }
            for j in indices
            if _num(corr[k, j]) is not None
        ]

    top, bottom = listed(data["top"][k, probe]), listed(data["bottom"][k, probe])
    followed = [e["train"] for e in top] + [e["train"] for e in bottom]
    return {
        "run_id": run_id,
        "probe": probe,
        "probe_text": values["probe_texts"][probe],
        "step": values["steps"][k],
        "steps": values["steps"],
        "verdict": values.get("verdict", [])[k] if values.get("verdict") else None,
        "most": top,
        "least": bottom,
        "series": {
            str(j): {
                "influence": [_num(v) for v in corr[:, j]],
                "se": [_num(v) for v in se[:, j]],
            }
            for j in followed
        },
    }


@router.get("/runs/{run_id}/susceptibilities/tokens")
def susceptibility_tokens(
    run_id: DbId,
    session: SessionDep,
    request: Request,
    step: int | None = Query(None, description="checkpoint step (default: the last)"),
) -> dict[str, Any]:
    """At ``step``: every observable example (token) with its susceptibility per weight
    group and, on token tasks, its cluster and 2-D projection (computed by the job)."""
    values = _newest(session, run_id, "susceptibilities")
    k = _step_index(values, step)
    data = _arrays(request, values)
    chi = data["chi"][k]  # (groups, items)
    labels = data["labels"][k].tolist() if "labels" in data else None
    coords = data["coords"][k] if "coords" in data else None
    texts = data["texts"].tolist()
    items = values["items"]
    return {
        "run_id": run_id,
        "step": values["steps"][k],
        "groups": values["groups"],
        "token_level": values["token_level"],
        "clusters": (values.get("clusters") or [None] * len(values["steps"]))[k],
        "items": [
            {
                "set": items["set"][m],
                "example": items["example"][m],
                "position": items["position"][m],
                "text": texts[m],
                "chi": [_num(v) for v in chi[:, m]],
                "cluster": None if labels is None or labels[m] < 0 else int(labels[m]),
                "xy": None if coords is None else [_num(coords[m, 0]), _num(coords[m, 1])],
            }
            for m in range(chi.shape[1])
        ],
    }


def _nested(a: Any) -> Any:
    """An array as nested lists of rounded floats, NaN as null."""
    import numpy as np

    arr = np.asarray(a, dtype=float)
    if arr.ndim <= 1:
        return [_num(x) for x in arr]
    return [_nested(x) for x in arr]


@router.get("/runs/{run_id}/influence/data")
def influence_data(run_id: DbId, session: SessionDep, request: Request) -> dict[str, Any]:
    """The newest influence result whole (what ``phaseboard export`` writes): per step the
    (test x train) correlations and their standard errors, with the examples' texts."""
    values = _newest(session, run_id, "influence")
    data = _arrays(request, values)
    return {
        "run_id": run_id,
        "steps": values["steps"],
        "probe_split": values.get("probe_split"),
        "probe_texts": values["probe_texts"],
        "train_texts": values["train_texts"],
        "influence": _nested(data["corr"]),  # (steps, test examples, training examples)
        "se": _nested(data["se"]),
        "turning_points": values.get("turning_points", []),
    }


@router.get("/runs/{run_id}/susceptibilities/data")
def susceptibilities_data(run_id: DbId, session: SessionDep, request: Request) -> dict[str, Any]:
    """The newest susceptibilities result whole (what ``phaseboard export`` writes): per step
    the (groups x sets) matrix and standard errors, and every example's (token's) values."""
    values = _newest(session, run_id, "susceptibilities")
    data = _arrays(request, values)
    out = {
        "run_id": run_id,
        "steps": values["steps"],
        "groups": values["groups"],
        "sets": values["sets"],
        "token_level": values["token_level"],
        "matrix": values["matrix"],  # (steps, groups, sets)
        "se": values["se"],
        "items": {**values["items"], "text": data["texts"].tolist()},
        "per_item": _nested(data["chi"]),  # (steps, groups, items)
        "turning_points": values.get("turning_points", []),
    }
    if "labels" in data:
        out["clusters"] = data["labels"].tolist()  # (steps, items); -1: no target there
    return out
