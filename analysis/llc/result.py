"""What an LLC estimate returns: the estimate, per-chain traces, diagnostics and a verdict.

A chain-subset mean is never the estimate: when any chain diverged, ``mean`` and ``std``
are NaN (``None`` in ``to_dict``) and the surviving chains' mean and std are kept apart as
``mean_surviving`` / ``std_surviving`` for the hover and the trace panel. With no diverged
chain the two pairs are equal.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------- result


def _json_clean(value: Any) -> Any:
    """Nested dicts/lists with every non-finite float as None."""
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    return value


def _json_float(x: float) -> float | None:
    """JSON has no NaN/inf (PostgreSQL rejects them): map non-finite to None."""
    return float(x) if math.isfinite(x) else None


def chain_summary(per_chain: list[float], diverged: list[int]) -> tuple[float, ...]:
    """(mean, std, mean_surviving, std_surviving) of per-chain LLCs; see the module doc.
    std is over chains (ddof 1); NaN where fewer than two chains are there to spread."""
    good = np.array([x for c, x in enumerate(per_chain) if c not in diverged], dtype=float)
    mean_s = float(good.mean()) if good.size else float("nan")
    std_s = float(good.std(ddof=1)) if good.size > 1 else float("nan")
    if diverged:
        return float("nan"), float("nan"), mean_s, std_s
    return mean_s, std_s, mean_s, std_s


@dataclass
class LLCResult:
    """One LLC estimate: summary, per-chain values and the traces to judge it by."""

    mean: float  # over all chains; NaN if any chain diverged (see the module doc)
    std: float  # std over chains (ddof 1), NaN likewise
    per_chain: list[float]
    init_loss: float  # mean of L_m(w*) over the minibatches used at draw steps
    loss_trace: list[list[float]]  # (num_chains, num_draws)
    n_beta: float
    diverged: list[int]  # chain indices excluded from mean/std
    num_params_free: int
    config: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # analysis.verdict: "ok", "diverged chains", ... with a one-line reason and the numbers
    verdict: str = "ok"
    verdict_detail: str = ""
    checks: dict[str, Any] = field(default_factory=dict)
    init_loss_per_chain: list[float] = field(default_factory=list)  # L(w*) on chain c's batches
    # {"draw": [i...], "distance": (C, P), "grad_norm": (C, P)} at P <= 50 evenly spaced draws
    diagnostics: dict[str, Any] = field(default_factory=dict)
    chance_loss: float | None = None
    chance_loss_source: str | None = None  # e.g. "ln(vocab 500)", "unigram entropy of ..."
    # The mean and std of the chains that did not diverge (equal to mean/std when none did).
    mean_surviving: float = float("nan")
    std_surviving: float = float("nan")
    # The bias checks' own chains, by check ("half_lr", "half_localization"): their
    # setting, per-chain LLCs (None where a check chain diverged) and mean.
    bias_checks: dict[str, Any] = field(default_factory=dict)

    def rebased(self, init_loss: float) -> LLCResult:
        """The same draws with L(w*) taken as ``init_loss`` (e.g. measured devinterp's way,
        see ``devinterp_init_loss``): per-chain LLC = n_beta x (chain mean - init_loss)."""
        per_chain = [self.n_beta * (sum(r) / len(r) - init_loss) for r in self.loss_trace]
        mean, std, mean_s, std_s = chain_summary(per_chain, self.diverged)
        return dataclasses.replace(
            self, per_chain=per_chain, mean=mean, std=std, init_loss=init_loss,
            init_loss_per_chain=[init_loss] * len(per_chain), mean_surviving=mean_s,
            std_surviving=std_s,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; non-finite floats become None."""
        from ..verdict import ADVICE

        return {
            "verdict": self.verdict,
            "verdict_detail": self.verdict_detail,
            "verdict_advice": ADVICE.get(self.verdict, ""),
            "checks": dict(self.checks),
            "init_loss_per_chain": [_json_float(x) for x in self.init_loss_per_chain],
            "diagnostics": self.diagnostics,
            "chance_loss": None if self.chance_loss is None else _json_float(self.chance_loss),
            "chance_loss_source": self.chance_loss_source,
            "sampler": self.config.get("sampler", "sgld"),
            "mean": _json_float(self.mean),
            "std": _json_float(self.std),
            "mean_surviving": _json_float(self.mean_surviving),
            "std_surviving": _json_float(self.std_surviving),
            "bias_checks": _json_clean(self.bias_checks),
            "per_chain": [_json_float(x) for x in self.per_chain],
            "init_loss": _json_float(self.init_loss),
            "loss_trace": [[_json_float(x) for x in row] for row in self.loss_trace],
            "n_beta": self.n_beta,
            "diverged": list(self.diverged),
            "num_params_free": self.num_params_free,
            "config": dict(self.config),
            "elapsed_s": self.elapsed_s,
        }
