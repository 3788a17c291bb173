"""The lens registry: one ``Lens`` declaration per lens, read by every consumer.

A lens is one analysis of a run (per checkpoint, or over the whole run). Planning reads a
lens's scope, config builder, checkpoint needs and rerun rule; the runner its handlers,
applicability predicate and whether it feeds stage boundaries; lanes its lane; blob GC its
result blobs; the API and the run page its title and view.

Where lenses come from, in order:
- the built-in lens modules: every public module of ``phaseboard.server.lenses`` defines
  ``LENSES`` (a tuple of ``Lens``), found by listing the package, imported on first use;
- entry points in group ``phaseboard.lenses`` (an installed package's ``Lens`` or tuple of
  them), on the API and worker machines alike;
- ``register(lens)`` at run time (tests, notebooks); ``registered(lens)`` undoes it after.

Nothing here imports torch, the analysis code or the job machinery: handlers and config
builders are plain callables the lens modules define, and the API process plans jobs from
the declarations alone.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from phaseboard.analysis.tasks import Task
    from phaseboard.server.db import Database
    from phaseboard.server.jobs.handlers import JobContext, ResultRows
    from phaseboard.server.jobs.planning import PlanContext
    from phaseboard.server.settings import Settings

Scope = Literal["checkpoint", "run"]
Lane = Literal["fast", "heavy"]
Rerun = Literal["checkpoints", "results", "never"]
Placement = Literal["lenses", "page"]

ENTRY_POINT_GROUP = "phaseboard.lenses"
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # the jobs table's kind column holds 40 characters

Handler = Callable[["JobContext"], "ResultRows"]
BatchHandler = Callable[[list["JobContext"]], "dict[int, ResultRows | Exception]"]
ConfigBuilder = Callable[["PlanContext"], dict[str, Any]]
Applies = Callable[["Task"], "str | None"]
OnDone = Callable[["Database", "Settings", int], "list[int]"]


@dataclass(frozen=True)
class LensView:
    """How the run page shows a lens.

    ``template``: a Jinja partial under ``frontend/templates``. ``script``: the JavaScript
    under ``frontend/static`` that draws it (the partial loads it), or None. ``placement``:
    ``"lenses"`` puts the partial in the run page's lens section, in ``order``; ``"page"``
    names a panel that ``run.html`` places itself (the loss/LLC plots, calibration, phases).
    """

    template: str
    script: str | None = None
    placement: Placement = "lenses"
    order: int = 100


@dataclass(frozen=True)
class Lens:
    """One lens: what it computes, when it runs and how it is shown.

    - ``scope``: ``"checkpoint"`` (one job per checkpoint) or ``"run"`` (one job reads the
      whole run).
    - ``handler(ctx) -> [{"restriction", "values"}]``: the function that calls the pure
      ``analysis`` code for one job. ``batch_handler(ctxs) -> {job_id: rows or exception}``,
      if given, takes several queued jobs of one run and config at once (vectorised).
    - ``config(plan) -> dict``: the job's config from the run's ``analysis_config`` and the
      request (``server.jobs.planning.PlanContext``); None: ``{}``. Its hash is part of the
      job's identity, so identical work is done once.
    - ``lane``: ``"fast"`` (a few forward passes: never waits behind sampling) or ``"heavy"``.
    - ``min_checkpoints``: usable checkpoints a run-scope lens needs; with fewer its job
      waits (state ``waiting``, "waiting for a 2nd checkpoint") and runs when they arrive.
    - ``auto``: in the server's default automatic lenses (``settings.auto_analyses`` unset).
    - ``rerun`` (run scope): what makes new work: ``"checkpoints"`` (the run's checkpoints
      changed: queued as checkpoints arrive), ``"results"`` (the results of lenses with
      ``feeds_phases`` changed: queued when one finishes), ``"never"`` (on request only).
    - ``result_blobs``: keys of a result's values that name a blob; ``phaseboard gc`` keeps
      the blobs they name.
    - ``feeds_phases``: a new result of this lens re-queues the lenses with
      ``rerun="results"`` (stage-boundary detection).
    - ``needs_task``: the run must name a task. ``applies(task) -> None | reason``: why the
      lens does not apply to this task (the job ends ``not_applicable`` with the reason, not
      ``failed``); None (the default) applies everywhere.
    - ``uses_llc_settings``: the job config is the run's LLC settings (checked at the API;
      the results form one LLC series per settings).
    - ``view``: how the run page shows it (``LensView``); None: not shown.
    - ``on_done(db, settings, run_id) -> job ids``: called once a job of this lens on the
      run has ended (done, failed or not applicable); what it plans in SQL is queued (the
      calibration makes its recommendation the run's LLC settings and queues the LLC jobs
      that waited for it).
    - ``internal``: for tests and benchmarks (never automatic, not on pages, not in the
      conformance matrix).
    """

    name: str
    title: str
    scope: Scope
    handler: Handler
    description: str = ""
    batch_handler: BatchHandler | None = None
    config: ConfigBuilder | None = None
    lane: Lane = "heavy"
    min_checkpoints: int = 1
    auto: bool = False
    rerun: Rerun = "never"
    result_blobs: tuple[str, ...] = ()
    feeds_phases: bool = False
    needs_task: bool = True
    applies: Applies | None = None
    uses_llc_settings: bool = False
    view: LensView | None = None
    internal: bool = False
    on_done: OnDone | None = None

    def __post_init__(self) -> None:
        problems = []
        if not NAME.fullmatch(self.name):
            problems.append("name must be lower_snake_case, at most 40 characters")
        if self.scope not in ("checkpoint", "run"):
            problems.append(f"scope must be 'checkpoint' or 'run', not {self.scope!r}")
        if self.lane not in ("fast", "heavy"):
            problems.append(f"lane must be 'fast' or 'heavy', not {self.lane!r}")
        if self.rerun not in ("checkpoints", "results", "never"):
            problems.append(f"rerun must be checkpoints, results or never, not {self.rerun!r}")
        if self.scope == "checkpoint" and self.rerun != "never":
            problems.append("rerun is for run-scope lenses (a checkpoint lens runs once each)")
        if self.scope == "checkpoint" and self.min_checkpoints != 1:
            problems.append("a checkpoint-scope lens needs exactly its own checkpoint")
        if self.min_checkpoints < 0:
            problems.append("min_checkpoints must be >= 0")
        if self.batch_handler is not None and self.scope != "checkpoint":
            problems.append("batch_handler is for checkpoint-scope lenses")
        if self.auto and not self.queued_on_checkpoint:
            problems.append("auto needs a lens queued as checkpoints arrive")
        if self.internal and self.auto:
            problems.append("an internal lens is never automatic")
        if not callable(self.handler):
            problems.append("handler must be callable")
        if problems:
            raise ValueError(f"lens {self.name!r}: " + "; ".join(problems))

    @property
    def queued_on_checkpoint(self) -> bool:
        """Whether a new checkpoint queues this lens (when the run asks for it)."""
        return self.scope == "checkpoint" or self.rerun == "checkpoints"

    def not_applicable(self, task: Task) -> str | None:
        """Why this lens does not apply to ``task``, or None when it does."""
        return None if self.applies is None else self.applies(task)


class UnknownLens(KeyError, ValueError):
    """No registered lens has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"unknown lens {name!r}; known lenses: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


_lock = threading.RLock()
_lenses: dict[str, Lens] = {}
_loaded = False


def _builtin_modules() -> list[str]:
    """Public modules of this package: each is a lens module with ``LENSES``."""
    from phaseboard.server import lenses as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    return [f"{package.__name__}.{name}" for name in sorted(names)]


def _declared(source: str, obj: Any) -> list[Lens]:
    found = [obj] if isinstance(obj, Lens) else list(obj or ())
    if not found or not all(isinstance(x, Lens) for x in found):
        raise TypeError(f"{source} must declare a Lens or a tuple of Lens objects")
    return found


def _load() -> None:
    """Import the built-in lens modules and the entry points, once."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        found: list[Lens] = []
        for module in _builtin_modules():
            mod = importlib.import_module(module)
            found += _declared(f"{module}.LENSES", getattr(mod, "LENSES", None))
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found += _declared(f"entry point {ep.name!r}", ep.load())
        for lens in found:
            _add(lens, replace=False)
        _loaded = True


def _add(lens: Lens, replace: bool) -> None:
    if not replace and lens.name in _lenses and _lenses[lens.name] is not lens:
        raise ValueError(f"lens {lens.name!r} is registered twice")
    _lenses[lens.name] = lens


def register(lens: Lens) -> Lens:
    """Add (or replace) a lens at run time; returns it."""
    _load()
    with _lock:
        _add(lens, replace=True)
    return lens


def unregister(name: str) -> None:
    """Remove a lens registered at run time (no-op if absent)."""
    with _lock:
        _lenses.pop(name, None)


@contextmanager
def registered(lens: Lens) -> Iterator[Lens]:
    """``with registered(Lens(...)):`` the lens exists inside the block (tests)."""
    _load()
    previous = _lenses.get(lens.name)
    register(lens)
    try:
        yield lens
    finally:
        with _lock:
            if previous is None:
                _lenses.pop(lens.name, None)
            else:
                _lenses[lens.name] = previous


def all_lenses(*, internal: bool = True) -> list[Lens]:
    """Every registered lens (``internal=False``: without the test-only ones), by name."""
    _load()
    with _lock:
        found = sorted(_lenses.values(), key=lambda lens: lens.name)
    return [lens for lens in found if internal or not lens.internal]


def lens_names(*, internal: bool = True) -> list[str]:
    return [lens.name for lens in all_lenses(internal=internal)]


def find_lens(name: str) -> Lens | None:
    _load()
    return _lenses.get(name)


def get_lens(name: str) -> Lens:
    """The lens ``name``; ``UnknownLens`` (a KeyError and ValueError) if none."""
    lens = find_lens(name)
    if lens is None:
        raise UnknownLens(name, lens_names())
    return lens


def auto_lens_names() -> list[str]:
    """The server's default automatic lenses (``Lens.auto``)."""
    return [lens.name for lens in all_lenses() if lens.auto]


def fast_lens_names() -> list[str]:
    return [lens.name for lens in all_lenses() if lens.lane == "fast"]


def batched_lens_names() -> list[str]:
    return [lens.name for lens in all_lenses() if lens.batch_handler is not None]


def phase_feeding_names() -> list[str]:
    """Lenses whose new results change a run's stage boundaries."""
    return [lens.name for lens in all_lenses() if lens.feeds_phases]


def result_blob_keys() -> list[tuple[str, str]]:
    """``(lens, key)`` for every result value that names a blob GC must keep."""
    return [(lens.name, key) for lens in all_lenses() for key in lens.result_blobs]


def page_views() -> list[Lens]:
    """Lenses shown in the run page's lens section, in their views' order."""
    shown = [lens for lens in all_lenses(internal=False) if lens.view is not None]
    shown = [lens for lens in shown if lens.view and lens.view.placement == "lenses"]
    return sorted(shown, key=lambda lens: (lens.view.order if lens.view else 0, lens.name))
