"""JSON API under ``/api``: one router per resource."""

from __future__ import annotations

from fastapi import APIRouter

from phaseboard.server.api import (
    calibration,
    checkpoints,
    datasets,
    groups,
    health,
    imports,
    influence,
    jobs,
    lenses,
    metrics,
    phases,
    plots,
    runs,
    shares,
    tokenizer,
    tracking,
)
from phaseboard.server.errors import ERROR_RESPONSES


def build_api_router() -> APIRouter:
    api = APIRouter(prefix="/api", responses=ERROR_RESPONSES)
    for module in (
        health,
        runs,
        tracking,
        checkpoints,
        datasets,
        tokenizer,
        imports,
        metrics,
        jobs,
        phases,
        shares,
        calibration,
        lenses,
        influence,
        groups,
        plots,
    ):
        api.include_router(module.router)
    return api
