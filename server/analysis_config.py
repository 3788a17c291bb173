"""Analysis configs checked at the API: ``LLCConfig``'s own rules plus the server's bounds.

A config is refused with a 422 naming the field when it is sent (``POST /runs``,
``PATCH /runs/{id}``, ``POST /runs/{id}/analyses``), not hours later in a worker, and never
runs with a size the server cannot afford (``settings.max_llc_*``). The rules live in one
place each: the field types come from ``analysis.llc.LLCConfig``'s annotations
(``LLCParams`` is derived from them), the value rules are ``LLCConfig.validate`` itself, the
bounds are settings, and the known lenses are the lens registry's (``server.lenses``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from phaseboard.analysis.llc import LLCConfig
from phaseboard.server.errors import BadInput
from phaseboard.server.settings import Settings

SAMPLERS = ("sgld", "rmsprop_sgld")
"""Samplers an LLC config may name (``LLCConfig.sampler`` where the analysis has it)."""

_LLC_FIELDS = {f.name for f in dataclasses.fields(LLCConfig)}


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _finite(hint: Any) -> Any:
    """``float`` (alone or in a union) as a finite float."""
    if hint is float or float in typing.get_args(hint):
        return FiniteFloat
    return hint


def _derive_llc_params() -> type[BaseModel]:
    """A pydantic model with every ``LLCConfig`` field, each optional (a partial override).

    Strict: ``"abc"`` or ``"3"`` is not a number and ``true`` is not an integer, as in
    ``LLCConfig.validate``; extra fields are refused (as ``LLCConfig.from_dict`` does);
    numbers are finite (``NaN``/``Infinity`` would reach a job row, which PostgreSQL refuses).
    """
    hints = typing.get_type_hints(LLCConfig)
    fields: dict[str, Any] = {
        name: (_finite(hints[name]) | None, Field(default=None)) for name in sorted(_LLC_FIELDS)
    }
    fields["sampler"] = (
        Literal[SAMPLERS] | None,  # type: ignore[valid-type]
        Field(default=None, description="SGLD variant: " + " | ".join(SAMPLERS)),
    )
    return create_model(  # type: ignore[call-overload,no-any-return]
        "LLCParams",
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__="LLC hyperparameters (any subset) over the run's and the server's defaults.",
        **fields,
    )


LLCParams = _derive_llc_params()


def _where(prefix: str, loc: tuple[Any, ...]) -> str:
    return ".".join([prefix, *(str(p) for p in loc)]) if loc else prefix


def _parse_llc(raw: object, prefix: str) -> dict[str, Any]:
    """Types only (strict); returns the fields that were given."""
    try:
        params = LLCParams.model_validate(raw)
    except ValidationError as exc:
        parts = [f"{_where(prefix, e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise BadInput("; ".join(parts)) from None
    return params.model_dump(exclude_unset=True)


def check_llc(settings: Settings, *layers: Mapping[str, Any] | None, prefix: str = "llc") -> None:
    """Check the LLC config that a job would get from ``layers`` (later ones win).

    Each layer is a partial config (the run's ``analysis_config["llc"]``, a request's
    ``llc``); the merged result over ``planning.DEFAULT_LLC`` must pass ``LLCConfig``'s rules
    and the settings' bounds. Raises ``BadInput`` naming the field.
    """
    from phaseboard.server.jobs.planning import DEFAULT_LLC

    merged: dict[str, Any] = dict(DEFAULT_LLC)
    for layer in layers:
        if layer:
            merged.update(_parse_llc(layer, prefix))
    known = {k: v for k, v in merged.items() if k in _LLC_FIELDS}
    known.pop("device", None)  # where a job runs is the worker's choice, checked by plan_jobs
    if known.get("n_beta") is None and known.get("num_samples") is None:
        known["num_samples"] = 2  # the worker fills in the task's training-set size
    try:
        config = LLCConfig(**known)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{prefix}: {exc}") from None
    _check_bounds(settings, config, prefix)


MAX_SGLD_LR = 1.0
"""Largest SGLD step size accepted: a step above 1 moves weights by more than their own
scale per step (every chain diverges); finite but absurd values such as 1e308 are refused."""


def _check_bounds(settings: Settings, config: LLCConfig, prefix: str) -> None:
    if config.lr > MAX_SGLD_LR:
        raise BadInput(
            f"{prefix}.lr: {config.lr:g} is over the largest SGLD step size of {MAX_SGLD_LR:g}"
        )
    limits = (
        ("num_chains", config.num_chains, settings.max_llc_chains, "MAX_LLC_CHAINS"),
        ("num_draws", config.num_draws, settings.max_llc_draws, "MAX_LLC_DRAWS"),
        ("batch_size", config.batch_size, settings.max_llc_batch_size, "MAX_LLC_BATCH_SIZE"),
    )
    for name, value, limit, env in limits:
        if value > limit:
            raise BadInput(
                f"{prefix}.{name}: {value} is over this server's limit of {limit} "
                f"(PHASEBOARD_{env})"
            )
    chain_steps = config.num_chains * config.total_steps
    if chain_steps > settings.max_llc_chain_steps:
        raise BadInput(
            f"{prefix}: num_chains x (num_burnin_steps + num_draws x num_steps_bw_draws) = "
            f"{chain_steps} SGLD chain-steps is over this server's limit of "
            f"{settings.max_llc_chain_steps} (PHASEBOARD_MAX_LLC_CHAIN_STEPS)"
        )


def check_kinds(kinds: object, where: str) -> None:
    """Every name in ``kinds`` is a registered lens (``server.lenses``)."""
    from phaseboard.server.lenses import lens_names

    known = ", ".join(lens_names(internal=False))
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise BadInput(f"{where}: must be a list of lens names; known: {known}")
    unknown = [k for k in kinds if k not in set(lens_names())]
    if unknown:
        raise BadInput(f"{where}: unknown lens(es) {unknown}; known: {known}")


def check_analysis_config(settings: Settings, config: Mapping[str, Any] | None) -> None:
    """A run's ``analysis_config``: ``analyses`` are known kinds, ``llc`` a valid LLC config,
    ``restrictions`` a list of names. Other keys (other analyses' settings) pass through."""
    if not config:
        return
    prefix = "analysis_config"
    if "analyses" in config and config["analyses"] is not None:
        check_kinds(config["analyses"], f"{prefix}.analyses")
    llc = config.get("llc")
    if llc is not None:
        if not isinstance(llc, Mapping):
            raise BadInput(f"{prefix}.llc: must be an object of LLC hyperparameters")
        check_llc(settings, llc, prefix=f"{prefix}.llc")
    restrictions = config.get("restrictions")
    if restrictions is not None and not (
        isinstance(restrictions, list) and all(isinstance(r, str) for r in restrictions)
    ):
        raise BadInput(f"{prefix}.restrictions: must be a list of restriction names")
    for key in ("metrics",):
        if config.get(key) is not None and not isinstance(config[key], Mapping):
            raise BadInput(f"{prefix}.{key}: must be an object")
