"""LLC hyperparameters (devinterp's vocabulary) and the callable types the estimators take."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module, Any], Tensor]
Progress = Callable[[int, int, str], None]
ParamMask = dict[str, Tensor | None]

# Per-chain per-draw diagnostics (distance from w*, gradient norm) are kept at this many
# evenly spaced draws.
DIAGNOSTIC_POINTS = 50
SAMPLERS = ("sgld", "rmsprop_sgld")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
AUTO_DTYPE = "auto"  # bfloat16 where the device computes it natively, else float32
# CPU flags of native bfloat16 dot products (AVX-512 BF16, AMX): there bfloat16 matmuls run
# about twice as fast as float32 ones; elsewhere oneDNN emulates them, slower than float32.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_dtype(device: str) -> str:
    """What ``dtype="auto"`` samples in on ``device``: ``bfloat16`` where it is computed
    natively (a CUDA device with bfloat16 support; a CPU with AVX-512 BF16 or AMX), else
    ``float32``. bfloat16 keeps float32 master weights (``analysis.llc.sampler``)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return (
            "bfloat16"
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else ("float32")
        )
    if kind == "cpu" and _cpu_flags() & _NATIVE_BF16_FLAGS:
        return "bfloat16"
    return "float32"


# ---------------------------------------------------------------------------- config


@dataclass
class LLCConfig:
    """SGLD hyperparameters, in devinterp's vocabulary.

    ``n_beta`` None means n / log n with n = ``num_samples`` (the training-set size).
    ``batch_size`` is not used by the sampler itself (it consumes whatever ``batches``
    yields); it is recorded so that callers building the batches and the stored config
    agree.

    ``bias_checks``: every full-model estimate also runs its chains at lr / 2 and at
    localization / 2 in the same vectorised call (paired with its own chains: the same
    minibatches and noise) and its verdict says "step-size bias" / "localization bias" when
    they disagree beyond their spread (``analysis.verdict``). They add two groups of
    ``num_chains`` rows to each call (three times the rows; less than three times the time
    where per-step overhead dominates); False turns them off.
    """

    lr: float = 1e-3  # SGLD step size epsilon
    n_beta: float | None = None
    localization: float = 100.0  # gamma
    num_chains: int = 4
    num_draws: int = 100
    num_burnin_steps: int = 0
    num_steps_bw_draws: int = 1
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    num_samples: int | None = None  # training-set size n
    # "sgld" or "rmsprop_sgld" (devinterp's RMSprop-preconditioned SGLD: the update and
    # the noise are scaled per coordinate by 1 / (sqrt(v) + rmsprop_eps) resp. its root,
    # v the running mean of squared minibatch gradients with decay rmsprop_alpha).
    sampler: str = "sgld"
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.1
    bias_checks: bool = True
    # The paired reference L_m(w*) at every k-th draw only (``analysis.llc.sampler``): 1
    # pairs every draw with its own minibatch's L_m(w*) (no minibatch noise in the
    # difference); where the chains' own fluctuation dwarfs that noise, k = 10 saves most
    # of a forward per chain-step at no cost in precision (bench/precision.py decides).
    reference_every: int = 1

    def __post_init__(self) -> None:
        if self.dtype == AUTO_DTYPE and isinstance(self.device, str):
            self.dtype = fast_dtype(self.device)  # the config records what is sampled in
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a message naming the offending field."""
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.localization) and self.localization >= 0):
            raise ValueError(f"localization must be finite and >= 0, got {self.localization!r}")
        for name in (
            "num_chains", "num_draws", "num_steps_bw_draws", "batch_size", "reference_every"
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.num_burnin_steps, int) or self.num_burnin_steps < 0:
            raise ValueError(
                f"num_burnin_steps must be an integer >= 0, got {self.num_burnin_steps!r}"
            )
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be one of {sorted(_DTYPES)} or {AUTO_DTYPE!r}, got {self.dtype!r}"
            )
        if self.n_beta is not None and not (math.isfinite(self.n_beta) and self.n_beta > 0):
            raise ValueError(f"n_beta must be a finite number > 0 or None, got {self.n_beta!r}")
        if self.num_samples is not None and (
            not isinstance(self.num_samples, int) or self.num_samples < 2
        ):
            raise ValueError(f"num_samples must be an integer >= 2, got {self.num_samples!r}")
        if self.n_beta is None and self.num_samples is None:
            raise ValueError(
                "set n_beta, or num_samples (the training-set size n) so that "
                "n_beta = n / log n can be derived"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not (0 <= self.rmsprop_alpha < 1 and self.rmsprop_eps > 0):
            raise ValueError("rmsprop_alpha must be in [0, 1) and rmsprop_eps > 0")
        if not isinstance(self.bias_checks, bool):
            raise ValueError(f"bias_checks must be true or false, got {self.bias_checks!r}")
        if self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda[:i] or mps, got {self.device!r}")

    @property
    def effective_n_beta(self) -> float:
        """n_beta as used: the explicit value or n / log n."""
        if self.n_beta is not None:
            return float(self.n_beta)
        assert self.num_samples is not None
        return self.num_samples / math.log(self.num_samples)

    @property
    def total_steps(self) -> int:
        return self.num_burnin_steps + self.num_draws * self.num_steps_bw_draws

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with keys in a fixed order (the server hashes it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLCConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LLCConfig fields: {unknown}; known: {sorted(known)}")
        return cls(**dict(data))
