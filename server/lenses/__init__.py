"""Lenses: the analyses Phaseboard runs on a training run, declared once each.

A lens is a pure function in ``analysis/`` plus one ``Lens`` declaration here: a module
``server/lenses/<name>.py`` whose ``LENSES`` tuple holds it, with the handler that calls the
analysis function on a job's checkpoint(s) and how it is planned, scheduled, kept and shown.
Planning, the runner, lanes, blob GC, the API and the run page all read the declarations
(``_registry``); nothing else lists lens names. See ``docs/contributing.md`` ("Adding a
lens") for the recipe, and ``_registry.Lens`` for every field.

Built-in lenses: ``metrics``, ``llc``, ``llc_restricted`` (per checkpoint), ``phases``,
``calibrate``, ``essential_dynamics``, ``learning_order`` (per run), and ``noop`` /
``sleep`` (internal, for tests and benchmarks).
"""

from __future__ import annotations

from phaseboard.server.lenses._registry import (
    ENTRY_POINT_GROUP,
    Lens,
    LensView,
    UnknownLens,
    all_lenses,
    auto_lens_names,
    find_lens,
    get_lens,
    lens_names,
    register,
    registered,
    result_blob_keys,
    unregister,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Lens",
    "LensView",
    "UnknownLens",
    "all_lenses",
    "auto_lens_names",
    "find_lens",
    "get_lens",
    "lens_names",
    "register",
    "registered",
    "result_blob_keys",
    "unregister",
]
