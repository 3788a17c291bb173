"""HTML routes: thin handlers that build a context (``server.read``) and render a template.

A request from htmx (``HX-Request``) gets the partial it targets; any other request gets the
full page, so every URL also works as a plain link, a bookmark or a share.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select

from phaseboard.server import read
from phaseboard.server.deps import RunDep, SessionDep, WriteAuth
from phaseboard.server.errors import NotFound
from phaseboard.server.models import Share
from phaseboard.server.read import PageView, parse_view
from phaseboard.server.schemas import MAX_ID, DbId, DbInt, Text
from phaseboard.server.security import CSP_WEBGL
from phaseboard.server.task_change import (
    analyse_stored_checkpoints,
    check_stored_checkpoints,
    task_changed,
)
from phaseboard.server.web.compare_checks import config_warnings
from phaseboard.server.web.edits import update_run_header
from phaseboard.server.web.templating import STATIC_DIR, make_templates

router = APIRouter(include_in_schema=False)
templates = make_templates()


def _is_partial(request: Request) -> bool:
    """htmx asked for a fragment (a history restore wants the whole page back)."""
    return (
        request.headers.get("hx-request") == "true"
        and request.headers.get("hx-history-restore-request") != "true"
    )


def _render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    settings = request.app.state.settings
    base = {"auth_required": bool(settings.api_token), "readonly": False, "share": None}
    base.update(context)
    response = templates.TemplateResponse(request, name, base, status_code=status_code)
    response.headers["Vary"] = "HX-Request"
    return response


def _not_found(request: Request, message: str) -> HTMLResponse:
    return _render(request, "not_found.html", {"message": message}, status_code=404)


# ---------------------------------------------------------------- runs list


@router.get("/", response_class=HTMLResponse)
def runs_page(
    request: Request,
    session: SessionDep,
    q: Text = "",
    tag: Text = "",
    task: Text = "",
    sort: str = "activity",
    status: str = "",
    filter: str = "",
    group: str = "",
    cols: str = "",
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> HTMLResponse:
    context = read.list_runs(
        session,
        limit=limit,
        q=q.strip(),
        tag=tag,
        task=task,
        sort=sort,
        status=status,
        filter=filter,
        group=group,
        cols=cols,
        crashed_after_s=request.app.state.settings.run_crashed_after_s,
    )
    if _is_partial(request):
        return _render(request, "_runs_table.html", context)
    response = _render(request, "runs.html", context)
    response.headers["Content-Security-Policy"] = CSP_WEBGL  # parcoords is WebGL
    return response


# ---------------------------------------------------------------- one run


def _run_context(
    session: SessionDep, run_id: int, crashed_after_s: float = 120.0
) -> dict[str, Any]:
    run = read.get_run(session, run_id)
    return {
        "run": read.run_dict(run, crashed_after_s),
        "ckpts": read.checkpoint_page(session, run_id),
        "jobs": read.jobs_panel(session, run_id),
        "boundaries": read.boundaries(session, run_id),
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: DbId, session: SessionDep) -> HTMLResponse:
    try:
        context = _run_context(session, run_id, request.app.state.settings.run_crashed_after_s)
    except NotFound as exc:
        return _not_found(request, exc.message)
    return _render(request, "run.html", context)


@router.get("/runs/{run_id}/header", response_class=HTMLResponse)
def run_header(request: Request, run: RunDep, edit: bool = False) -> HTMLResponse:
    context = {"run": read.run_dict(run, request.app.state.settings.run_crashed_after_s)}
    return _render(request, "_run_header.html", {**context, "edit": edit})


@router.patch("/runs/{run_id}/header", response_class=HTMLResponse, dependencies=[WriteAuth])
def edit_run_header(
    request: Request,
    run_id: DbId,
    session: SessionDep,
    task: Annotated[Text, Form()] = "",
    task_config: Annotated[Text, Form()] = "",
    tags: Annotated[Text, Form()] = "",
    notes: Annotated[Text, Form()] = "",
) -> HTMLResponse:
    old = read.get_run(session, run_id)
    before = (old.task, dict(old.task_config or {}))
    run = update_run_header(
        session,
        run_id,
        settings=request.app.state.settings,
        task=task,
        task_config=task_config,
        tags=tags,
        notes=notes,
    )
    if task_changed(before, run):  # the stored checkpoints must fit; then analyse them
        check_stored_checkpoints(session, request.app.state.settings, request.app.state.store, run)
        session.commit()
        analyse_stored_checkpoints(request.app.state.queue, run_id)
    crashed_after_s = request.app.state.settings.run_crashed_after_s
    context = {"run": read.run_dict(run, crashed_after_s), "edit": False}
    return _render(request, "_run_header.html", context)


@router.get("/runs/{run_id}/checkpoints", response_class=HTMLResponse)
def run_checkpoints(
    request: Request, run: RunDep, session: SessionDep, page: DbInt = 0
) -> HTMLResponse:
    context = {"run": {"id": run.id}, "ckpts": read.checkpoint_page(session, run.id, page)}
    return _render(request, "_checkpoints.html", context)


@router.get("/runs/{run_id}/jobs", response_class=HTMLResponse)
def run_jobs(request: Request, run: RunDep, session: SessionDep) -> HTMLResponse:
    context = {"run": {"id": run.id}, "jobs": read.jobs_panel(session, run.id)}
    return _render(request, "_jobs.html", context)


# ---------------------------------------------------------------- compare and shares


def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if part.isascii() and part.isdigit() and int(part) <= MAX_ID and int(part) not in ids:
            ids.append(int(part))
    return ids[:12]


def _compare_context(session: SessionDep, runs: str, tag: str) -> dict[str, Any]:
    """The compared runs: the ids given, then the runs carrying ``tag`` (at most 12 in all)."""
    tag_ids, all_tags = read.tagged_runs(session, tag)
    given = _parse_ids(runs)
    ids = list(dict.fromkeys(given + tag_ids))
    chosen = read.runs_by_ids(session, ids[:12])
    note = ""
    if tag and len(ids) > 12:
        note = f"Showing the first 12 of {len(ids)} runs ({len(tag_ids)} tagged {tag!r})."
    elif tag and not tag_ids:
        note = f"No run carries the tag {tag!r}."
    return {
        "runs": chosen,
        "tag": tag,
        "all_tags": all_tags,
        "tag_note": note,
        "warnings": config_warnings(session, chosen),
    }


@router.get("/compare", response_class=HTMLResponse, response_model=None)
def compare_page(
    request: Request,
    session: SessionDep,
    runs: str = "",
    tag: Annotated[str, Query(max_length=200)] = "",
    pick: Annotated[list[DbId] | None, Query()] = None,
) -> HTMLResponse | RedirectResponse:
    """Overlay of the runs given (``runs=1,2``) and of the runs tagged ``tag``."""
    if pick:  # the no-JavaScript picker sends ?pick=1&pick=2; the address keeps runs=1,2
        ids = ",".join(str(i) for i in _parse_ids(",".join(map(str, pick))))
        query = urlencode({"runs": ids, **({"tag": tag} if tag else {})})
        return RedirectResponse(f"/compare?{query}", status_code=303)
    context = _compare_context(session, runs, tag)
    context["all_runs"] = read.run_choices(session)
    return _render(request, "compare.html", context)


@router.get("/s/{slug}", response_class=HTMLResponse)
def shared_page(request: Request, slug: Text, session: SessionDep) -> HTMLResponse:
    """A frozen view: the page ``view`` names, read-only, with the view's state."""
    share = session.scalars(select(Share).where(Share.slug == slug)).first()
    if share is None:
        return _not_found(request, f"share link {slug!r} does not exist")
    view: PageView = parse_view(share.view)
    shared = {"slug": slug, "view": view.view, "query": view.query}
    if view.page == "runs":
        given = {k: v for k, v in view.params.items() if k in read.RUNS_TABLE_QUERY}
        context = read.list_runs(
            session, **given, crashed_after_s=request.app.state.settings.run_crashed_after_s
        )
        return _render(request, "runs.html", {**context, "readonly": True, "share": shared})
    if view.page == "compare":
        p = view.params
        context = _compare_context(session, p.get("runs", ""), p.get("tag", "")[:200])
        context.update(all_runs=[], readonly=True, share=shared)
        return _render(request, "compare.html", context)
    assert view.run_id is not None
    try:
        context = _run_context(session, view.run_id, request.app.state.settings.run_crashed_after_s)
    except NotFound as exc:
        return _not_found(request, exc.message)
    return _render(request, "run.html", {**context, "readonly": True, "share": shared})


# ---------------------------------------------------------------- mounting


def mount_web(app: FastAPI) -> None:
    """Add the pages and ``/static`` (plotly.js from its package)."""
    from phaseboard.server.web.static_assets import mount_assets

    mount_assets(app)  # plotly.js gzipped (GET and HEAD) and the favicon
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
