"""What an LLC estimate returns: the estimate, per-chain traces, diagnostics and a verdict."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------- result


def _json_float(x: float) -> float | None:
    """JSON has no NaN/inf (PostgreSQL rejects them): map non-finite to None."""
    return float(x) if math.isfinite(x) else None


@dataclass
class LLCResult:
    """One LLC estimate: summary, per-chain values and the traces to judge it by."""

    mean: float  # over non-diverged chains (NaN if all diverged)
    std: float
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

    def rebased(self, init_loss: float) -> LLCResult:
        """The same draws with L(w*) taken as ``init_loss`` (e.g. measured devinterp's way,
        see ``devinterp_init_loss``): per-chain LLC = n_beta x (chain mean - init_loss)."""
        per_chain = [self.n_beta * (sum(r) / len(r) - init_loss) for r in self.loss_trace]
        good = np.array([x for c, x in enumerate(per_chain) if c not in self.diverged])
        mean = float(good.mean()) if good.size else float("nan")
        std = float(good.std(ddof=1)) if good.size > 1 else 0.0
        return dataclasses.replace(
            self, per_chain=per_chain, mean=mean, std=std, init_loss=init_loss,
            init_loss_per_chain=[init_loss] * len(per_chain),
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
            "chance_loss": self.chance_loss,
            "sampler": self.config.get("sampler", "sgld"),
            "mean": _json_float(self.mean),
            "std": _json_float(self.std),
            "per_chain": [_json_float(x) for x in self.per_chain],
            "init_loss": _json_float(self.init_loss),
            "loss_trace": [[_json_float(x) for x in row] for row in self.loss_trace],
            "n_beta": self.n_beta,
            "diverged": list(self.diverged),
            "num_params_free": self.num_params_free,
            "config": dict(self.config),
            "elapsed_s": self.elapsed_s,
        }
