"""Several runs on one picture: group bands of a measure, and the runs' paths in one PC space.

Cross-run statistics of an arbitrary run selection have no result rows of their own: they are
read off the runs' stored results (metric points, metrics/LLC results, the essential-dynamics
outputs blob) and computed by ``analysis.run_group``. No forward pass happens here.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from phaseboard.server.deps import SessionDep
from phaseboard.server.errors import BadInput, NotFound
from phaseboard.server.models import Run
from phaseboard.server.read import llc_series, metric_points, newest_result
from phaseboard.server.series_store import read_series, series_names

router = APIRouter(tags=["groups"])

MAX_GROUP_RUNS = 12
# The joint PCA holds every kept run's outputs at once (float64): at most this many values.
MAX_JOINT_VALUES = 2**25
# Default series of the band view: losses, the LLC and the progress measures, at most this many.
MAX_DEFAULT_SERIES = 8

RunsParam = Annotated[str, Query(max_length=200, description="comma-separated run ids, e.g. 1,2,3")]


def parse_group(session: Session, runs: str) -> list[Run]:
    """The runs named in ``runs`` in the order given (duplicates once). 422 on a token that
    is no id, on none or more than ``MAX_GROUP_RUNS``; 404 on an unknown id."""
    parts = [p.strip() for p in runs.split(",") if p.strip()]
    bad = [p for p in parts if not re.fullmatch(r"[0-9]{1,9}", p)]  # ASCII digits, int4
    if bad:
        raise BadInput(f"runs must be run ids separated by commas; got {bad[0]!r}")
    ids = list(dict.fromkeys(int(p) for p in parts))
    if not ids:
        raise BadInput("give at least one run id, e.g. runs=1,2")
    if len(ids) > MAX_GROUP_RUNS:
        raise BadInput(f"at most {MAX_GROUP_RUNS} runs in one group; got {len(ids)}")
    found = {r.id: r for r in session.scalars(sa.select(Run).where(Run.id.in_(ids)))}
    for i in ids:
        if i not in found:
            raise NotFound(f"run {i} does not exist")
    return [found[i] for i in ids]


# ---------------------------------------------------------------- bands


def _run_measures(session: Session, run: Run, max_points: int) -> dict[str, Any]:
    """Names of a run's measures and a reader for each: ``{name: () -> (steps, values)}``.

    Logged metric series under their own name (downsampled to ``max_points``), scalars of the
    metrics results as ``ckpt/<key>``, progress measures as ``progress/<name>``, and ``llc``
    (the plain LLC mean per checkpoint, the run's shown LLC settings).
    """
    readers: dict[str, Any] = {}
    for name in series_names(session, run.id):

        def logged(name: str = name) -> tuple[list[float], list[float]]:
            steps, values, _ = read_series(session, run.id, name, max_points)
            return steps.tolist(), values.tolist()

        readers[name] = logged
    for key, points in metric_points(session, run.id).items():
        name = key if key.startswith("progress/") else f"ckpt/{key}"
        readers[name] = lambda p=points: (sorted(p), [p[k] for k in sorted(p)])
    llc = llc_series(session, run)["llc"]
    if any(m is not None for m in llc["mean"]):
        readers["llc"] = lambda: (llc["step"], llc["mean"])
    return readers


def _is_loss(name: str) -> bool:
    return not name.startswith("progress/") and name.rsplit("/", 1)[-1].endswith("loss")


def default_series(common: list[str]) -> list[str]:
    """Losses (logged ones, else computed ones), the LLC, then progress measures (not the
    per-head ones), at most ``MAX_DEFAULT_SERIES``."""
    logged = [n for n in common if _is_loss(n) and not n.startswith("ckpt/")]
    losses = logged or [n for n in common if _is_loss(n)]
    llc = ["llc"] if "llc" in common else []
    progress = [n for n in common if n.startswith("progress/") and n.count("/") == 1]
    return (losses[:3] + llc + progress)[:MAX_DEFAULT_SERIES]


def _finite_points(steps: list[float], values: list[Any]) -> tuple[list[float], list[float]]:
    pairs = [
        (s, float(v))
        for s, v in zip(steps, values, strict=True)
        if v is not None and math.isfinite(float(v))
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@router.get("/groups/bands")
def group_bands(
    session: SessionDep,
    runs: RunsParam,
    series: Annotated[
        str, Query(max_length=2000, description="comma-separated series names; empty: defaults")
    ] = "",
    band: Annotated[str, Query(pattern="^(minmax|std)$")] = "minmax",
    max_points: Annotated[int, Query(ge=10, le=5000)] = 500,
) -> dict[str, Any]:
    """Mean and band of each series over the runs, with every run's own points.

    ``band``: ``minmax`` (pointwise min and max over the runs) or ``std`` (mean ± the sample
    standard deviation over the runs). Runs are put on a common step grid as
    ``analysis.run_group.group_band`` states (union of steps on the range all runs cover,
    log-step interpolation where a run lacks a step). A run without a series is listed in
    that series' ``missing`` and left out of its band. ``available``: names every run has.
    """
    from phaseboard.analysis.run_group import group_band

    group = parse_group(session, runs)
    measures = {r.id: _run_measures(session, r, max_points) for r in group}
    every = set.intersection(*(set(m) for m in measures.values()))
    common = sorted(every, key=lambda n: (n.startswith(("ckpt/", "progress/")), n))
    wanted = [s.strip() for s in series.split(",") if s.strip()][:MAX_GROUP_RUNS]
    names = list(dict.fromkeys(wanted)) or default_series(common)
    out: dict[str, Any] = {}
    for name in names:
        members, missing = [], []
        for run in group:
            reader = measures[run.id].get(name)
            points = _finite_points(*reader()) if reader else ([], [])
            if points[0]:
                members.append({"id": run.id, "step": points[0], "value": points[1]})
            else:
                missing.append(run.id)
        entry: dict[str, Any] = {"runs": members, "missing": missing}
        g = group_band([(m["step"], m["value"]) for m in members], band, max_points)
        entry.update(
            n=len(members) if len(g.steps) else 0,
            step=g.steps.tolist(),
            mean=g.mean.tolist(),
            lower=g.lower.tolist(),
            upper=g.upper.tolist(),
        )
        if members and not len(g.steps):
            entry["note"] = "the runs' steps do not overlap: no band"
        out[name] = entry
    return {
        "runs": [{"id": r.id, "name": r.name} for r in group],
        "band": band,
        "available": common,
        "series": out,
    }


# ---------------------------------------------------------------- paths


def _probe_key(values: dict[str, Any]) -> tuple[Any, ...]:
    p = values.get("probe") or {}
    keys = ("task", "split", "probe_examples", "probe_hash")
    return (*(p.get(k) for k in keys), values.get("output_dim"))


def _load_outputs(store: Any, values: dict[str, Any]) -> Any:
    import numpy as np

    with store.open_path(values["outputs_blob"]).open("rb") as fh:
        return np.load(io.BytesIO(fh.read()), allow_pickle=False)


@router.get("/groups/paths")
def group_paths(session: SessionDep, request: Request, runs: RunsParam) -> dict[str, Any]:
    """The runs' essential-dynamics paths in one PC space, and their pairwise function-space
    distance over steps (``analysis.run_group.joint_pca`` / ``function_distance``).

    Read from each run's newest essential-dynamics result and its outputs blob. Runs without
    one, or probed on other examples than the group (the probe identity held by most runs;
    the first run's on a tie), are listed in ``skipped`` with the reason. With several pairs,
    ``distance_summary`` is their mean and min-max over pairs (``group_band``'s grid rule).
    """
    from phaseboard.analysis.run_group import function_distance, group_band, joint_pca

    group = parse_group(session, runs)
    store = request.app.state.store
    skipped: list[dict[str, Any]] = []
    found: list[tuple[Run, dict[str, Any]]] = []
    for run in group:
        values = newest_result(session, run.id, "essential_dynamics")
        reason = ""
        if values is None:
            reason = "no essential-dynamics result yet"
        elif "outputs_blob" not in values:
            reason = "its essential-dynamics result predates stored outputs: rerun it"
        elif values["outputs_blob"] is None:
            reason = values.get("outputs_skipped") or "its outputs were not kept"
        if reason:
            skipped.append({"run": run.id, "reason": reason})
        else:
            found.append((run, values))  # type: ignore[arg-type]
    counts = Counter(_probe_key(v) for _, v in found)
    ref = max(counts, key=lambda k: counts[k]) if counts else None  # first wins a tie
    ref_name = next((r.name for r, v in found if _probe_key(v) == ref), "")
    kept: list[tuple[Run, list[int], Any]] = []
    total = 0
    for run, values in found:
        if _probe_key(values) != ref:
            p = values.get("probe") or {}
            skipped.append(
                {
                    "run": run.id,
                    "reason": f"different probe examples than {ref_name} "
                    f"({p.get('task')}, {p.get('split')}, {p.get('probe_examples')} examples)",
                }
            )
            continue
        try:
            outputs = _load_outputs(store, values)
        except NotFound:
            skipped.append({"run": run.id, "reason": "its outputs blob is gone from the store"})
            continue
        except (ValueError, OSError, EOFError):  # not a .npy array: a damaged blob
            skipped.append({"run": run.id, "reason": "its outputs blob cannot be read"})
            continue
        steps = [int(s) for s in values["steps"]]
        if outputs.ndim != 2 or outputs.shape[0] != len(steps):
            skipped.append({"run": run.id, "reason": "its outputs do not match its checkpoints"})
            continue
        if total + outputs.size > MAX_JOINT_VALUES:
            skipped.append({"run": run.id, "reason": "over the size limit of the joint view"})
            continue
        total += outputs.size
        kept.append((run, steps, outputs))
    paths, distances, explained = [], [], []
    if kept:
        j = joint_pca([(s, o) for _, s, o in kept], n_components=3)
        explained = j.explained_variance.tolist()
        for (run, _, _), st, comps in zip(kept, j.steps, j.components, strict=True):
            paths.append(
                {"id": run.id, "name": run.name, "steps": st.tolist(), "components": comps.tolist()}
            )
        for i, (ra, sa_, oa) in enumerate(kept):
            for rb, sb, ob in kept[i + 1 :]:
                steps, rms = function_distance(sa_, oa, sb, ob)
                distances.append(
                    {"a": ra.id, "b": rb.id, "step": steps.tolist(), "rms": rms.tolist()}
                )
    probe = next((v.get("probe") for r, v in found if _probe_key(v) == ref), None)
    summary = None
    pairs = [(d["step"], d["rms"]) for d in distances if d["step"]]
    if len(pairs) > 1:  # many pairs: their mean and min-max as one line and a band
        g = group_band(pairs, "minmax")
        summary = {
            "n_pairs": len(pairs),
            "step": g.steps.tolist(),
            "mean": g.mean.tolist(),
            "lower": g.lower.tolist(),
            "upper": g.upper.tolist(),
        }
    return {
        "runs": [{"id": r.id, "name": r.name} for r in group],
        "probe": probe,
        "explained_variance": explained,
        "paths": paths,
        "distances": distances,
        "distance_summary": summary,
        "skipped": skipped,
    }
