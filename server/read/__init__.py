"""The read layer: what the pages (``server.web``) and the JSON routes (``server.api``) show.

Both route packages read through these functions and never import each other. Each takes a
``Session``, only reads rows (analyses were computed by the workers; pages never compute)
and returns a model row or plain dicts and lists ready for a template or a JSON response.
"""

from __future__ import annotations

from phaseboard.server.read.boundaries import boundaries, boundary_dict
from phaseboard.server.read.checkpoints import CHECKPOINT_PAGE, checkpoint_page
from phaseboard.server.read.jobs import eta_rows, jobs_by_kind, jobs_panel
from phaseboard.server.read.llc_series import llc_series
from phaseboard.server.read.plots import plot_data
from phaseboard.server.read.results import (
    metric_points,
    newest_result,
    progress_series,
    scalar_values,
)
from phaseboard.server.read.runs import (
    RUN_SORTS,
    RUNS_TABLE_QUERY,
    get_run,
    list_runs,
    run_choices,
    run_dict,
    runs_by_ids,
    tagged_runs,
)
from phaseboard.server.read.views import MAX_VIEW_CHARS, PageView, parse_view

__all__ = [
    "CHECKPOINT_PAGE",
    "MAX_VIEW_CHARS",
    "RUNS_TABLE_QUERY",
    "RUN_SORTS",
    "PageView",
    "boundaries",
    "boundary_dict",
    "checkpoint_page",
    "eta_rows",
    "get_run",
    "jobs_by_kind",
    "jobs_panel",
    "list_runs",
    "llc_series",
    "metric_points",
    "newest_result",
    "parse_view",
    "plot_data",
    "progress_series",
    "run_choices",
    "run_dict",
    "runs_by_ids",
    "scalar_values",
    "tagged_runs",
]
