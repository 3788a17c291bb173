"""Local learning coefficient (LLC) estimation with SGLD, vectorised over chains.

At a checkpoint w* we run SGLD chains localized at w*:

    w <- w - (eps/2) * (n_beta * grad L_m(w) + gamma * (w - w*)) + N(0, eps)

and estimate ``llc = n_beta * (mean over chains and draws of L_m(w) - L(w*))``.

Unlike devinterp (one chain at a time) every chain - and, in ``estimate_llc_many``,
every checkpoint, in ``analysis.restrict`` every weight group, in ``calibrate`` every
hyperparameter setting - advances in one ``torch.func.vmap``-ed gradient step over
stacked parameters. Internally everything is a "row": one (checkpoint, group, chain)
triple; a row holds its own copy of only the tensors its group frees, the frozen rest is
one copy per checkpoint. Every chain draws its own minibatches (chain c of every
checkpoint/group/setting the same ones), so the chains are independent and std /
sqrt(chains) is an honest standard error. Each checkpoint's w* is also evaluated
(forward only, at draw steps) on exactly chain c's minibatches; chain c's LLC is n_beta
x (its mean loss - that mean L_m(w*)), a paired (lower-variance) difference, and
``init_loss`` is their mean.

Sampling runs in eval mode on a structural copy of the model (``_structure_copy``): the
caller's module is never moved, switched or written to. Each result carries a verdict
(``analysis.verdict``) and downsampled per-chain diagnostics (distance from w*, gradient
norm). ``LLCConfig.sampler`` picks plain SGLD or devinterp's RMSprop-preconditioned SGLD.

Noise is drawn outside vmap from seeded ``torch.Generator``s (one per parameter) with shape
(num_chains, *param_shape) and shared by every checkpoint/group/setting of a call
(common random numbers): the result for a checkpoint does not depend on what else is
in the batch, so ``estimate_llc_many`` reproduces ``estimate_llc`` per checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from analysis.verdict import diverged_chains, judge

LossFn = Callable[[nn.Module, Any], Tensor]
Progress = Callable[[int, int, str], None]
ParamMask = dict[str, Tensor | None]

# Per-chain per-draw diagnostics (distance from w*, gradient norm) are kept at this many
# evenly spaced draws.
DIAGNOSTIC_POINTS = 50
SAMPLERS = ("sgld", "rmsprop_sgld")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------- config


@dataclass
class LLCConfig:
    """SGLD hyperparameters, in devinterp's vocabulary.

    ``n_beta`` None means n / log n with n = ``num_samples`` (the training-set size).
    ``batch_size`` is not used by the sampler itself (it consumes whatever ``batches``
    yields); it is recorded so that callers building the batches and the stored config
    agree.
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a message naming the offending field."""
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.localization) and self.localization >= 0):
            raise ValueError(f"localization must be finite and >= 0, got {self.localization!r}")
        for name in ("num_chains", "num_draws", "num_steps_bw_draws", "batch_size"):
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
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
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
        from analysis.verdict import ADVICE

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


# ---------------------------------------------------------------------------- batches


class _BatchCycler:
    """Yield batches forever: re-iterate an iterable when exhausted; a one-shot iterator
    is recorded on the first pass and replayed."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self._one_shot = iter(batches) is batches
        self._source = batches
        self._seen: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        if self._one_shot:
            for batch in self._source:  # type: ignore[union-attr]
                self._seen.append(batch)
                yield batch
            if not self._seen:
                raise ValueError("batches is empty")
            yield from itertools.cycle(self._seen)
        else:
            while True:
                empty = True
                for batch in self._source:
                    empty = False
                    yield batch
                if empty:
                    raise ValueError("batches is empty")


def _to_device(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors to device; floating tensors to the sampling dtype."""
    if isinstance(batch, Tensor):
        batch = batch.to(device)
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(v, device, dtype) for v in batch)
    return batch


# ---------------------------------------------------------------------------- sampler


class _LossModule(nn.Module):
    """Turn ``loss_fn(model, batch)`` into a module so functional_call can swap weights."""

    def __init__(self, inner: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.inner = inner
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.inner, batch)

    def loss_with(self, tensors: Mapping[str, Tensor], batch: Any) -> Tensor:
        """The loss with ``tensors`` (by the model's own names) in place of the module's."""
        return functional_call(self, {"inner." + n: t for n, t in tensors.items()}, (batch,))


@dataclass
class _SamplerOutput:
    traces: Tensor  # (K, G, C, D) minibatch losses of the chains at draw steps
    ref: Tensor  # (K, G, C, D) minibatch losses at w* on group g's chain c's batches
    finite: Tensor  # (K, G, C) bool: the chain's weights stayed finite
    num_free: list[int]  # per group
    elapsed_s: float
    n_betas: list[float]  # per group
    diagnostics: dict[str, Tensor]  # name -> (K, G, C, P), at the draws ``diagnostic_draws``
    diagnostic_draws: list[int]


def _group_mask_tensor(masks: Sequence[ParamMask | None], name: str, p: Tensor) -> Tensor | None:
    """(G, *shape) float mask for one parameter across groups, or None if all-free."""
    if all(m is None or (name in m and m[name] is None) for m in masks):
        return None
    rows = []
    for m in masks:
        if m is None or (name in m and m[name] is None):
            rows.append(torch.ones_like(p))
        elif name in m:
            mask = torch.as_tensor(m[name], device=p.device)
            if mask.shape != p.shape or mask.dtype != torch.bool:
                raise ValueError(
                    f"mask for {name!r} must be a bool tensor of shape {tuple(p.shape)}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            rows.append(mask.to(p.dtype))
        else:
            rows.append(torch.zeros_like(p))
    return torch.stack(rows)


def _structure_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose tensors live on the meta device, in eval mode.

    ``functional_call`` supplies every parameter and buffer, so the copy only lends its
    structure: the caller's module is never moved, switched to eval or written to (a
    BatchNorm's ``num_batches_tracked`` stays as it was), and no weights are duplicated.
    """
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = t.detach().to("meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    template = copy.deepcopy(model, memo)
    return template.eval()


def _stack_batches(batches: list[Any]) -> Any:
    """C batches -> one batch with a leading chain dim of size C."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.stack(batches)
    if isinstance(first, Mapping):
        return {k: _stack_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(_stack_batches([b[i] for b in batches]) for i in range(len(first)))
    raise TypeError(
        f"chains draw independent minibatches, so batch leaves must be tensors; got {type(first)}"
    )


def _pass_batch(stacked: list[Any], streams: list[int], C: int) -> Any:
    """A pass's minibatch, one row per group x chain (row r: group r // C, chain r % C),
    from each stream's (C, ...) stack: one stream is expanded, several concatenated."""
    if len(set(streams)) == 1:
        return _repeat_rows(stacked[streams[0]], len(streams))
    return _concat_rows([stacked[s] for s in streams])


def _repeat_rows(batch: Any, times: int) -> Any:
    """(C, ...) -> (times * C, ...): row r is row r % C."""
    if isinstance(batch, Tensor):
        if times == 1:
            return batch
        return batch.unsqueeze(0).expand(times, *batch.shape).reshape(-1, *batch.shape[1:])
    if isinstance(batch, Mapping):
        return {k: _repeat_rows(v, times) for k, v in batch.items()}
    return type(batch)(_repeat_rows(v, times) for v in batch)


def _concat_rows(batches: list[Any]) -> Any:
    """Batches (C, ...) -> one (len(batches) * C, ...), in order."""
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat(batches)
    if isinstance(first, Mapping):
        return {k: _concat_rows([b[k] for b in batches]) for k in first}
    return type(first)(_concat_rows([b[i] for b in batches]) for i in range(len(first)))


def _free_names(named: Mapping[str, Tensor], group_masks: Sequence[ParamMask | None]) -> list[str]:
    """Parameters some group frees (part of), in module order; everything else is fixed."""
    return [n for n in named if any(m is None or n in m for m in group_masks)]


@dataclass
class _Pass:
    """One vmap-ed pass of ``_run_sgld``: its groups' rows, (K, G_p * C, *shape) copies of
    only the tensors they free, the frozen rest at w*, and per tensor the update's
    coefficients shaped (1, G_p, 1, ...) to broadcast against the (K, G_p, C, *shape) view
    of a row, each with the group's mask folded in (0 where a coordinate is frozen)."""

    groups: list[int]
    index: Tensor  # the groups as a tensor, to scatter this pass's rows into (K, G, C)
    params: dict[str, Tensor]
    fixed: dict[str, Tensor]
    masks: dict[str, Tensor | None]  # (1, G_p, 1, *shape) or None (all free)
    drift: dict[str, Tensor]  # -eps / 2 * n_beta: multiplies grad L_m(w)
    pull: dict[str, Tensor]  # -eps / 2 * gamma: multiplies w - w*
    noise: dict[str, Tensor]  # sqrt(eps): multiplies N(0, 1)
    square_avg: dict[str, Tensor]  # RMSprop's running mean of squared gradients, if used


def _with_masks(coef: dict[str, Tensor], masks: dict[str, Tensor | None]) -> dict[str, Tensor]:
    """Per-group coefficients times the groups' masks: 0 on frozen coordinates."""
    return {n: c if masks[n] is None else c * masks[n] for n, c in coef.items()}


def _masked_square_sum(t: Tensor, mask: Tensor | None) -> Tensor:
    """(K, G_p, C, *shape) -> (K, G_p, C): the squared norm over the free coordinates."""
    sq = t.square() if mask is None else t.square() * mask
    return sq.sum(tuple(range(3, t.dim())))


def _passes(
    group_masks: Sequence[ParamMask | None], free_names: Sequence[str]
) -> list[tuple[list[int], list[str]]]:
    """Groups that free the same tensors share a pass: ``[(groups, tensor names)]``.

    A pass carries per-row copies of only its own tensors; the rest stay at w*, one copy
    per checkpoint, so the forward up to the first free tensor is one matmul for all of a
    checkpoint's rows and the backward stops there (see ``_run_sgld``).
    """
    by_names: dict[tuple[str, ...], list[int]] = {}
    for g, m in enumerate(group_masks):
        names = tuple(free_names) if m is None else tuple(n for n in free_names if n in m)
        by_names.setdefault(names, []).append(g)
    return [(groups, list(names)) for names, groups in by_names.items()]


def row_equivalents(
    model: nn.Module, group_masks: Sequence[ParamMask | None], num_chains: int
) -> float:
    """One checkpoint's memory in a restricted run, in whole-model rows: its largest pass's
    per-row copies (groups x chains x that pass's tensors) plus its frozen w* and its
    reference row. Chunking by this instead of groups x chains fits more checkpoints in a
    batch when groups free only part of the model."""
    named = dict(model.named_parameters())
    free_names = _free_names(named, group_masks)
    total = max(1, sum(p.numel() for p in named.values()))
    largest = max(
        len(groups) * num_chains * sum(named[n].numel() for n in names)
        for groups, names in _passes(group_masks, free_names)
    )
    return largest / total + 2


def largest_pass_rows(
    model: nn.Module, group_masks: Sequence[ParamMask | None], config: LLCConfig
) -> int:
    """A checkpoint's rows in its largest pass (groups x chains): those step together."""
    free_names = _free_names(dict(model.named_parameters()), group_masks)
    return max(len(g) for g, _ in _passes(group_masks, free_names)) * config.num_chains


def _run_sgld(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    state_dicts: Sequence[Mapping[str, Tensor]],
    group_masks: Sequence[ParamMask | None],
    group_lr: Sequence[float],
    group_gamma: Sequence[float],
    progress: Progress | None,
    group_nbeta: Sequence[float] | None = None,
    group_batches: Sequence[Iterable[Any]] | None = None,
) -> _SamplerOutput:
    """Run K checkpoints x G groups x C chains (+ reference rows), vectorised.

    Every chain draws its own minibatches (chain c of every checkpoint and group gets the
    same ones, so comparisons between checkpoints/groups stay paired); its reference row
    evaluates L_m(w*) on exactly those minibatches. With ``group_batches`` (one iterable
    per group, ``batches`` unused) each group draws from its own, as a data-restricted
    estimate on that data alone would, and has its own reference rows.

    Groups that free the same tensors run as one pass: a vmap over checkpoints (the
    frozen tensors at that checkpoint's w*) of a vmap over the pass's group x chain rows
    (its free tensors, one copy per row). Frozen tensors are never copied per row, so a
    layer none of the pass's tensors touch is one matmul over all rows of a checkpoint
    rather than a batched matmul per row, and gradients are taken only for the pass's own
    tensors. Each step draws the minibatches and the noise once for all passes.
    """
    t0 = time.perf_counter()
    device, dtype = torch.device(config.device), config.torch_dtype
    K, G, C, D = len(state_dicts), len(group_masks), config.num_chains, config.num_draws
    if group_batches is not None and len(group_batches) != G:
        raise ValueError(f"group_batches: {len(group_batches)} iterables for {G} groups")
    streams = [batches] if group_batches is None else list(group_batches)
    stream_of = [0] * G if group_batches is None else list(range(G))  # group -> its stream
    nbetas = [config.effective_n_beta] * G if group_nbeta is None else list(group_nbeta)

    template = _structure_copy(model)
    named = dict(model.named_parameters())
    named_buffers = dict(model.named_buffers())
    for m in group_masks:
        for n in m or {}:
            if n not in named:
                raise ValueError(f"param_mask names unknown parameter {n!r}")
    free_names = _free_names(named, group_masks)
    if not free_names:
        raise ValueError("param_mask leaves no parameter free")
    all_names = list(named) + list(named_buffers)

    def on_device(t: Tensor) -> Tensor:  # floating tensors in the sampling dtype, others kept
        return t.detach().to(device, dtype if t.is_floating_point() else None)

    # Every tensor at every checkpoint's w*: (K, *shape).
    w_star = {n: torch.stack([on_device(sd[n]) for sd in state_dicts]) for n in all_names}

    def per_group(
        values: Sequence[float], groups: list[int], params: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Per tensor, the groups' values shaped (1, G_p, 1, 1, ...) to broadcast against
        the (K, G_p, C, *shape) view of the pass's rows."""
        picked = torch.tensor([values[g] for g in groups], device=device, dtype=dtype)
        return {n: picked.view(1, len(groups), 1, *[1] * (w.dim() - 2)) for n, w in params.items()}

    rmsprop = config.sampler == "rmsprop_sgld"
    num_free = [0] * G
    passes: list[_Pass] = []
    for groups, names in _passes(group_masks, free_names):
        Gp = len(groups)
        masks: dict[str, Tensor | None] = {}
        for n in names:
            p = named[n].detach().to(device, dtype)
            gm = _group_mask_tensor([group_masks[g] for g in groups], n, p)
            masks[n] = None if gm is None else gm.view(1, Gp, 1, *p.shape)
            for i, g in enumerate(groups):
                num_free[g] += p.numel() if gm is None else int(gm[i].sum().item())
        # Rows (K, G_p * C): row r of checkpoint k is group r // C, chain r % C.
        params = {
            n: w_star[n].unsqueeze(1).expand(K, Gp * C, *w_star[n].shape[1:]).clone() for n in names
        }
        eps = per_group(group_lr, groups, params)
        gamma, nbeta = per_group(group_gamma, groups, params), per_group(nbetas, groups, params)

        drift = {n: -0.5 * e * nbeta[n] for n, e in eps.items()}
        pull = {n: -0.5 * e * gamma[n] for n, e in eps.items()}
        noise = {n: e.sqrt() for n, e in eps.items()}
        if not rmsprop:  # RMSprop scales drift and noise per coordinate: it masks after
            drift, pull, noise = (_with_masks(c, masks) for c in (drift, pull, noise))
        passes.append(
            _Pass(
                groups=groups,
                index=torch.tensor(groups, device=device),
                params=params,
                fixed={n: w_star[n] for n in all_names if n not in params},
                masks=masks,
                drift=drift,
                pull=pull,
                noise=noise,
                square_avg={n: torch.zeros_like(w) for n, w in params.items()} if rmsprop else {},
            )
        )
    anchors = {n: w_star[n].view(K, 1, 1, *w_star[n].shape[1:]) for n in free_names}
    alpha, rms_eps = config.rmsprop_alpha, config.rmsprop_eps

    wrapper = _LossModule(template, loss_fn)

    def loss_at(free: dict[str, Tensor], fixed_: dict[str, Tensor], batch: Any) -> Tensor:
        return wrapper.loss_with({**free, **fixed_}, batch)

    # Outer vmap: checkpoints (free rows, frozen w*); inner: a checkpoint's rows, which
    # share its frozen tensors and each see their chain's minibatch.
    row_step = vmap(grad_and_value(loss_at), in_dims=(0, None, 0))
    if K > 1:
        step_fn = vmap(row_step, in_dims=(0, 0, None))
    else:  # one checkpoint: no outer batch dim, so frozen layers are plain matmuls

        def step_fn(free: dict[str, Tensor], fixed_: dict[str, Tensor], batch: Any) -> Any:
            grads, loss = row_step(
                {n: w[0] for n, w in free.items()}, {n: t[0] for n, t in fixed_.items()}, batch
            )
            return {n: g_.unsqueeze(0) for n, g_ in grads.items()}, loss.unsqueeze(0)

    # (K, C): checkpoint k's w* on chain c's minibatch.
    ref_loss_fn = vmap(vmap(loss_at, in_dims=(None, None, 0)), in_dims=(0, None, None))

    # One noise stream per parameter, seeded by (seed, name): a tensor's noise does not
    # depend on which other tensors are free, so masked runs are reproducible alone.
    gens = {}
    for n in free_names:
        gens[n] = torch.Generator(device=device)
        gens[n].manual_seed(config.seed * 1_000_003 + zlib.crc32(n.encode()))
    traces: list[Tensor] = []  # each (K, G, C)
    refs: list[Tensor] = []  # each (K, S, C): S streams of minibatches
    dist: list[Tensor] = []  # each (K, G, C): |w - w*| over the free coordinates
    gnorm: list[Tensor] = []  # each (K, G, C): |grad L_m(w)| over the free coordinates
    diag_draws = diagnostic_draws(D, DIAGNOSTIC_POINTS)
    wanted = set(diag_draws)
    total = config.total_steps
    report_every = max(1, total // 50)
    stream_iters = [iter(_BatchCycler(b)) for b in streams]
    with torch.no_grad():
        for step in range(total):
            # Per stream, its C chains' minibatches stacked: (C, ...).
            chain_batches = [
                _stack_batches([_to_device(next(it), device, dtype) for _ in range(C)])
                for it in stream_iters
            ]
            noises = {
                n: torch.randn(
                    (C, *w_star[n].shape[1:]), generator=gens[n], device=device, dtype=dtype
                )
                for n in free_names
            }
            draw_step = step - config.num_burnin_steps
            is_draw = draw_step >= 0 and draw_step % config.num_steps_bw_draws == 0
            # Distance and gradient norm only at the draws a result keeps (DIAGNOSTIC_POINTS).
            is_diag = is_draw and len(traces) in wanted
            if is_draw:
                trace = torch.empty(K, G, C, device=device, dtype=dtype)
            if is_diag:
                d2 = torch.zeros(K, G, C, device=device, dtype=dtype)
                g2 = torch.zeros(K, G, C, device=device, dtype=dtype)
            for ps in passes:
                params, Gp = ps.params, len(ps.groups)
                batch = _pass_batch(chain_batches, [stream_of[g] for g in ps.groups], C)
                grads, loss = step_fn(params, ps.fixed, batch)  # loss: (K, G_p * C)
                if is_draw:
                    trace[:, ps.index] = loss.view(K, Gp, C)
                if is_diag:
                    pd2 = torch.zeros(K, Gp, C, device=device, dtype=dtype)
                    pg2 = torch.zeros(K, Gp, C, device=device, dtype=dtype)
                for n, w in params.items():
                    shape = w.shape[2:]
                    w_chain = w.view(K, Gp, C, *shape)  # a view: updated in place
                    grad = grads[n].view(K, Gp, C, *shape)
                    diff = w_chain - anchors[n]
                    if is_diag:
                        pd2 += _masked_square_sum(diff, ps.masks[n])
                        pg2 += _masked_square_sum(grad, ps.masks[n])
                    if rmsprop:  # devinterp's RMSpropPreconditioner: v on the raw minibatch grad
                        v = ps.square_avg[n].view(K, Gp, C, *shape)
                        v.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                        precond = 1.0 / (v.sqrt() + rms_eps)
                        step_ = (ps.drift[n] * grad + ps.pull[n] * diff) * precond
                        step_ += ps.noise[n] * precond.sqrt() * noises[n]
                        if ps.masks[n] is not None:
                            step_ *= ps.masks[n]
                        w_chain.add_(step_)
                    else:  # w += -eps/2 (n_beta grad + gamma (w - w*)) + sqrt(eps) N(0, 1)
                        w_chain.addcmul_(grad, ps.drift[n])
                        w_chain.addcmul_(diff, ps.pull[n])
                        w_chain.addcmul_(noises[n], ps.noise[n])
                if is_diag:
                    d2[:, ps.index] = pd2
                    g2[:, ps.index] = pg2
            if is_draw:
                refs.append(torch.stack([ref_loss_fn(w_star, {}, b) for b in chain_batches], 1))
                traces.append(trace)
            if is_diag:
                dist.append(d2.sqrt())
                gnorm.append(g2.sqrt())
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == total):
                progress(step + 1, total, f"chain draws {len(traces)}/{D}")

    chain_trace = torch.stack(traces, dim=-1).float().cpu()  # (K, G, C, D)
    ref = torch.stack(refs, dim=-1).float().cpu()  # (K, S, C, D)
    ref = ref[:, stream_of]  # (K, G, C, D): each group's reference rows
    finite = torch.ones(K, G, C, dtype=torch.bool)
    for ps in passes:
        ok = torch.ones(K, len(ps.groups), C, dtype=torch.bool)
        for w in ps.params.values():
            ok &= torch.isfinite(w).flatten(2).all(dim=2).cpu().view(K, len(ps.groups), C)
        finite[:, ps.groups] = ok
    diag = {
        "distance": torch.stack(dist, dim=-1).float().cpu(),
        "grad_norm": torch.stack(gnorm, dim=-1).float().cpu(),
    }
    return _SamplerOutput(
        chain_trace, ref, finite, num_free, time.perf_counter() - t0, nbetas, diag, diag_draws
    )


def diagnostic_draws(num_draws: int, points: int) -> list[int]:
    """At most ``points`` evenly spaced draw indices, first and last included."""
    return sorted(
        {round(i * (num_draws - 1) / max(points - 1, 1)) for i in range(min(points, num_draws))}
    )


def _json_rows(rows: Tensor) -> list[list[float | None]]:
    return [[_json_float(float(x)) for x in row] for row in rows]


def _summarise(
    out: _SamplerOutput,
    k: int,
    g: int,
    config: LLCConfig,
    elapsed_s: float,
    chance_loss: float | None = None,
) -> LLCResult:
    n_beta = out.n_betas[g]
    chains = out.traces[k, g].double()  # (C, D)
    ref = out.ref[k, g].double()  # (C, D)
    init_per_chain = ref.mean(dim=1)  # (C,)
    init_loss = float(init_per_chain.mean())
    per_chain = (n_beta * (chains.mean(dim=1) - init_per_chain)).tolist()
    diverged = diverged_chains(
        chains.numpy(), init_per_chain.numpy(), n_beta, out.num_free[g],
        chance_loss=chance_loss, weights_finite=out.finite[k, g].numpy(),
    )  # fmt: skip
    good = np.array([x for c, x in enumerate(per_chain) if c not in diverged])
    mean = float(good.mean()) if good.size else float("nan")
    std = float(good.std(ddof=1)) if good.size > 1 else (0.0 if good.size else float("nan"))
    verdict = judge(
        chains.numpy(), init_per_chain.numpy(), n_beta, out.num_free[g], diverged,
        chance_loss=chance_loss,
    )  # fmt: skip
    draws = out.diagnostic_draws
    dist = _json_rows(out.diagnostics["distance"][k, g])
    gnorm = _json_rows(out.diagnostics["grad_norm"][k, g])
    return LLCResult(
        mean=mean,
        std=std,
        per_chain=[float(x) for x in per_chain],
        init_loss=init_loss,
        loss_trace=chains.tolist(),
        n_beta=n_beta,
        diverged=diverged,
        num_params_free=out.num_free[g],
        config=config.to_dict(),
        elapsed_s=elapsed_s,
        verdict=verdict.name,
        verdict_detail=verdict.detail,
        checks=verdict.to_dict()["checks"],
        init_loss_per_chain=init_per_chain.tolist(),
        diagnostics={"draw": draws, "distance": dist, "grad_norm": gnorm},
        chance_loss=chance_loss,
    )


# ---------------------------------------------------------------------------- public API


def estimate_llc(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    param_mask: ParamMask | None = None,
    progress: Progress | None = None,
    chance_loss: float | None = None,
) -> LLCResult:
    """Estimate the LLC of ``model`` at its current weights, all chains in one vmap.

    ``chance_loss``: the task's loss at chance level (e.g. ln(classes)), used by the
    verdict (``analysis.verdict``) to tell chains that left the basin. The model is only
    read: sampling runs in eval mode on a structural copy (see ``_structure_copy``).

    ``loss_fn(model, batch)`` must be vmap-friendly (no ``.item()``, no data-dependent
    Python control flow). ``param_mask``: None frees every parameter; otherwise absent
    names are frozen, a None value frees the whole tensor and a bool tensor frees only
    its True entries (gradient, localization and noise are all masked).
    """
    sd = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    out = _run_sgld(
        model, loss_fn, batches, config, [sd], [param_mask],
        [config.lr], [config.localization], progress,
    )  # fmt: skip
    return _summarise(out, 0, 0, config, out.elapsed_s, chance_loss)


# One vectorised batch's memory on a CPU. Not a memory limit but a cache one: past a few
# hundred MB of rows the step gets slower per row (bench/RESULTS.md, "Rows per vmap call
# on a CPU": on the 214k-parameter NeoX case 54 rows stepped ~20 % faster than 80 or 18).
CPU_BATCH_BYTES = 512 * 1024 * 1024


def rows_for_budget(model: nn.Module, config: LLCConfig, budget_bytes: int) -> int:
    """How many SGLD rows (one checkpoint x group x chain each) fit in ``budget_bytes``.

    A row holds its parameters, their gradient, noise, the update and autograd/vmap
    temporaries: about 8 parameter-sized tensors, plus the activations of one minibatch
    (guessed as 4 parameter-sized tensors for the small models this is made for). A rough
    guess on purpose: it only decides how checkpoints are chunked, never what is computed.
    """
    n = sum(p.numel() for p in model.parameters())
    per_row = 12 * n * torch.tensor([], dtype=config.torch_dtype).element_size()
    return max(1, int(budget_bytes // max(per_row, 1)))


def default_max_rows(model: nn.Module, config: LLCConfig) -> int:
    """Rows per vmap call: on a CPU what fits ``CPU_BATCH_BYTES``; on CUDA about a third
    of free memory, assuming ~8 parameter-sized tensors per row plus activations."""
    if not config.device.startswith("cuda") or not torch.cuda.is_available():
        return rows_for_budget(model, config, CPU_BATCH_BYTES)
    free_bytes, _ = torch.cuda.mem_get_info(torch.device(config.device))
    n = sum(p.numel() for p in model.parameters())
    per_row = 8 * n * torch.tensor([], dtype=config.torch_dtype).element_size()
    return max(config.num_chains + 1, int(free_bytes / 3 / max(per_row, 1)))


# Activations of one vmap call on a CPU past which more checkpoints per call stop paying.
# Small models' steps are per-op overhead, which batching removes (the demo: 16 checkpoints
# per call 2.4x cheaper each than one); a model whose rows already save tens of MB for the
# backward is compute-bound at one checkpoint, and more rows only add page faults: the
# attention_lm task (10.7 MB per row) ran 2x slower per checkpoint at 16 per call than at 1
# (bench/RESULTS.md, "Checkpoints per call by activations").
CPU_ACTIVATION_BYTES = 128 * 1024 * 1024


_EMPTY = object()


def first_batch(batches: Iterable[Any]) -> tuple[Any, Iterable[Any]]:
    """The first minibatch, and ``batches`` still holding it (a one-shot iterator is
    re-chained; a list or other re-iterable is returned as is)."""
    it = iter(batches)
    first = next(it, _EMPTY)
    if first is _EMPTY:
        raise ValueError("batches is empty")
    if it is batches:
        return first, itertools.chain([first], it)
    return first, batches


def activation_bytes(model: nn.Module, loss_fn: LossFn, batch: Any, config: LLCConfig) -> int:
    """Bytes autograd keeps for the backward of one row's loss on ``batch``: the tensors
    saved by its forward, parameters not counted (a row's own copies are in ``row_equivalents``).

    Run as the sampler runs it, on a structure copy in eval mode with the weights swapped in,
    so the caller's module is neither switched to eval nor written to (BatchNorm statistics).
    """
    dtype = next(model.parameters()).dtype
    probe = _LossModule(_structure_copy(model), loss_fn)
    weights = {
        n: t.detach().requires_grad_(t.is_floating_point()) for n, t in model.named_parameters()
    }
    own = {t.untyped_storage().data_ptr() for t in weights.values()}  # and views of them
    saved = [0]

    def pack(t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in own:
            saved[0] += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batch = _to_device(batch, torch.device("cpu"), dtype)
        probe.loss_with({**weights, **dict(model.named_buffers())}, batch)
    size = torch.tensor([], dtype=config.torch_dtype).element_size()
    return saved[0] * size // torch.tensor([], dtype=dtype).element_size()


def checkpoints_per_call(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    config: LLCConfig,
    rows_per_checkpoint: int,
    limit: int,
) -> int:
    """``limit`` checkpoints per vmap call, fewer on a CPU where their activations would pass
    ``CPU_ACTIVATION_BYTES`` (never fewer than one). ``rows_per_checkpoint``: the rows of a
    checkpoint that run forward and backward together (its chains, or its largest pass)."""
    if limit <= 1 or config.device.startswith("cuda"):  # nothing to cap: no probe
        return limit
    per_ckpt = rows_per_checkpoint * activation_bytes(model, loss_fn, batch, config)
    return max(1, min(limit, CPU_ACTIVATION_BYTES // max(per_ckpt, 1)))


def chunk_checkpoints(state_dicts: Sequence[Any], per_chunk: int) -> list[Sequence[Any]]:
    """Checkpoints in chunks of ``per_chunk`` (with several, make the batches
    ``replayable`` so every chunk replays the same minibatches)."""
    return [state_dicts[i : i + per_chunk] for i in range(0, len(state_dicts), per_chunk)]


def replayable(batches: Iterable[Any], config: LLCConfig) -> Iterable[Any]:
    """``batches``, or a one-shot iterator of them as a list of what one sampler run
    draws (one minibatch per chain and step), so a second run replays the same ones."""
    if not isinstance(batches, Sequence) and iter(batches) is batches:
        return list(itertools.islice(batches, config.total_steps * config.num_chains))
    return batches


def _chunk_progress(progress: Progress | None, ci: int, n_chunks: int) -> Progress:
    """Chunk ``ci``'s progress reported as part of the whole run."""

    def report(done: int, total: int, msg: str) -> None:
        if progress is not None:
            progress(ci * total + done, n_chunks * total, f"{msg} (chunk {ci + 1}/{n_chunks})")

    return report


def checkpoint_tensors(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]], model: nn.Module | None
) -> tuple[nn.Module, list[Mapping[str, Tensor]]]:
    """A template module and, per checkpoint, the tensors the sampler reads (modules or
    state_dicts; with only state_dicts pass ``model``, a template of the architecture)."""
    template = model
    state_dicts: list[Mapping[str, Tensor]] = []
    for item in models_or_state_dicts:
        if isinstance(item, nn.Module):
            template = template or item
            state_dicts.append({**dict(item.named_parameters()), **dict(item.named_buffers())})
        else:
            state_dicts.append(item)
    if template is None:
        raise ValueError("pass model= (a template module) when giving only state_dicts")
    # The tensors the sampler reads: tied weights appear once (not state_dict()'s aliases).
    needed = {**dict(template.named_parameters()), **dict(template.named_buffers())}
    # Non-persistent buffers (rotary tables, causal masks) are never in a state_dict: the
    # template's are the checkpoints' too.
    kept = set(template.state_dict())
    derived = {n: b for n, b in template.named_buffers() if n not in kept}
    if derived:
        state_dicts = [{**derived, **sd} for sd in state_dicts]
    for name, t in needed.items():
        for i, sd in enumerate(state_dicts):
            if name not in sd or tuple(sd[name].shape) != tuple(t.shape):
                raise ValueError(f"checkpoint {i}: {name!r} missing or of a different shape")
    return template, state_dicts


def estimate_llc_many(
    models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    model: nn.Module | None = None,
    param_mask: ParamMask | None = None,
    progress: Progress | None = None,
    max_batch: int | None = None,
    chance_loss: float | None = None,
) -> list[LLCResult]:
    """LLC at several checkpoints of one architecture, checkpoints x chains in one vmap.

    Items are modules or state_dicts; with only state_dicts pass ``model`` (a template
    of the architecture). ``max_batch`` caps the rows (checkpoints x (chains + 1)) per
    vmap call; checkpoints are chunked to fit (None: ``default_max_rows``). Every chunk
    replays the same seed and batch sequence, so a checkpoint's result is the same as from
    ``estimate_llc`` on it alone.
    """
    if not models_or_state_dicts:
        return []
    template, state_dicts = checkpoint_tensors(models_or_state_dicts, model)
    if max_batch is None:
        max_batch = default_max_rows(template, config)
    first, batches = first_batch(batches)
    per_ckpt = max(1, max_batch // (config.num_chains + 1))
    per_ckpt = checkpoints_per_call(template, loss_fn, first, config, config.num_chains, per_ckpt)
    chunks = chunk_checkpoints(state_dicts, per_ckpt)
    if len(chunks) > 1:
        batches = replayable(batches, config)
    results: list[LLCResult] = []
    for ci, chunk in enumerate(chunks):
        chunk_progress = _chunk_progress(progress, ci, len(chunks))
        out = _run_sgld(
            template, loss_fn, batches, config, chunk, [param_mask] * 1,
            [config.lr], [config.localization], chunk_progress,
        )  # fmt: skip
        results += [
            _summarise(out, k, 0, config, out.elapsed_s / len(chunk), chance_loss)
            for k in range(len(chunk))
        ]
    return results


def warm_up(device: str = "cpu") -> float:
    """Run ``estimate_llc_many`` once on a toy model; returns the seconds it took.

    torch.func's first vmap/grad call in a process imports and sets up about a second of
    Python (1.0-1.2 s on the 2-core CPU machine, bench/RESULTS.md). A worker that calls
    this while it waits for work spares its first estimate that second; later calls take
    milliseconds.
    """
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the toy's init leaves the caller's RNG alone
        toy = nn.Sequential(nn.Embedding(3, 2), nn.Flatten(), nn.Linear(2, 2))
    batch = (torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))

    def loss(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(model(b[0]), b[1])

    config = LLCConfig(num_chains=1, num_draws=1, n_beta=1.0, device=device)
    estimate_llc_many([toy, toy], loss, [batch], config)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- calibration


@dataclass
class CalibrationEntry:
    """One (lr, localization, n_beta) setting; the summary fields are at the primary
    (last) calibrated checkpoint, ``per_checkpoint`` has every checkpoint's."""

    lr: float
    localization: float
    mean: float
    std: float
    diverged: list[int]
    stable: bool  # no diverged chain and 0 < estimate <= d/2
    flat: bool  # the verdict's trend test passed (second half of the mean trace)
    drift: float  # |slope| * length of the 2nd half of the mean trace
    spread: float  # residual std of the 2nd half of the mean trace
    mean_trace: list[float]
    n_beta: float = 0.0
    verdict: str = "ok"  # the first non-ok verdict over the checkpoints, else "ok"
    ok: bool = True  # verdict ok on every calibrated checkpoint
    per_checkpoint: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("mean", "std", "drift", "spread"):
            d[key] = _json_float(d[key])
        d["mean_trace"] = [_json_float(x) for x in self.mean_trace]
        return d


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@dataclass
class CalibrationReport:
    entries: list[CalibrationEntry]
    recommended: CalibrationEntry | None
    reason: str
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "entries": [e.to_dict() for e in self.entries],
            "recommended": None
            if rec is None
            else {"lr": rec.lr, "localization": rec.localization, "n_beta": rec.n_beta},
            "reason": self.reason,
            "config": dict(self.config),
        }

    def summary(self) -> str:
        """A fixed-width table, one line per setting, the recommended one starred."""
        lines = [
            f"{'':2}{'lr':>10} {'gamma':>10} {'n_beta':>8} {'llc':>10} {'std':>9} {'div':>4} "
            "verdict"
        ]
        for e in self.entries:
            star = "* " if e is self.recommended else "  "
            lines.append(
                f"{star}{e.lr:>10.3g} {e.localization:>10.3g} {e.n_beta:>8.4g} {e.mean:>10.4g} "
                f"{e.std:>9.3g} {len(e.diverged):>4} {e.verdict}"
            )
        lines.append(self.reason)
        return "\n".join(lines)


def recommend(entries: Sequence[CalibrationEntry]) -> tuple[CalibrationEntry | None, str]:
    """The rule (README "Calibration"): among settings whose verdict is ``ok`` on every
    calibrated checkpoint (d/2 bound, basin, divergence, sign and trend all pass), the
    largest lr (fastest mixing); ties go to the smallest localization (least pull to w*),
    then to the smallest n_beta."""
    ok = [e for e in entries if e.ok]
    if not ok:
        counts: dict[str, int] = {}
        for e in entries:
            counts[e.verdict] = counts.get(e.verdict, 0) + 1
        why = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        return None, f"no setting was ok on every checkpoint ({why}): try smaller lrs, " + (
            "larger localizations or more draws"
        )
    best = max(ok, key=lambda e: (e.lr, -e.localization, -e.n_beta))
    return best, (
        f"recommended lr={best.lr:g}, localization={best.localization:g}, "
        f"n_beta={best.n_beta:.4g}: the largest lr whose verdict is ok on all "
        f"{len(best.per_checkpoint)} calibrated checkpoint(s)"
    )


def calibrate(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    config: LLCConfig,
    *,
    lrs: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2),
    localizations: Sequence[float] = (1.0, 10.0, 100.0),
    n_betas: Sequence[float] | None = None,
    checkpoints: Sequence[Mapping[str, Tensor]] | None = None,
    param_mask: ParamMask | None = None,
    chance_loss: float | None = None,
    progress: Progress | None = None,
) -> CalibrationReport:
    """Run the (lr x localization x n_beta) grid on every checkpoint in one vmap batch.

    ``checkpoints``: state_dicts of the same architecture to calibrate on together (e.g.
    the first settled, a middle and the last checkpoint); None: ``model``'s own weights.
    A setting is recommended only if its verdict (``analysis.verdict``) is ``ok`` on all
    of them: a setting fine at the end of training can diverge earlier on. See
    ``recommend`` for the rule.
    """
    n_betas = [config.effective_n_beta] if n_betas is None else [float(b) for b in n_betas]
    grid = [(float(lr), float(g), b) for lr in lrs for g in localizations for b in n_betas]
    if checkpoints is None:
        checkpoints = [{**dict(model.named_parameters()), **dict(model.named_buffers())}]
    out = _run_sgld(
        model, loss_fn, batches, config, list(checkpoints), [param_mask] * len(grid),
        [lr for lr, _, _ in grid], [g for _, g, _ in grid], progress,
        group_nbeta=[b for _, _, b in grid],
    )  # fmt: skip
    K = len(checkpoints)
    entries = []
    for g, (lr, gamma, nb) in enumerate(grid):
        cfg = dataclasses.replace(config, lr=lr, localization=gamma, n_beta=nb)
        per_ckpt = []
        for k in range(K):
            res = _summarise(out, k, g, cfg, out.elapsed_s / (len(grid) * K), chance_loss)
            good = [c for c in range(config.num_chains) if c not in res.diverged]
            trace = out.traces[k, g, good].double().mean(dim=0).tolist() if good else []
            per_ckpt.append((res, trace))
        res, trace = per_ckpt[-1]
        bad = [r.verdict for r, _ in per_ckpt if r.verdict != "ok"]
        entries.append(
            CalibrationEntry(
                lr=lr,
                localization=gamma,
                mean=res.mean,
                std=res.std,
                diverged=res.diverged,
                stable=not res.diverged
                and math.isfinite(res.mean)
                and 0 < res.mean <= res.num_params_free / 2,
                flat=res.verdict != "not converged",
                drift=float(res.checks.get("trend_drift") or float("nan")),
                spread=float(res.checks.get("trend_noise") or float("nan")),
                mean_trace=trace,
                n_beta=nb,
                verdict=bad[0] if bad else "ok",
                ok=not bad,
                per_checkpoint=[
                    {
                        "index": k,
                        "mean": _json_float(r.mean),
                        "std": _json_float(r.std),
                        "verdict": r.verdict,
                        "verdict_detail": r.verdict_detail,
                        "diverged": r.diverged,
                        "init_loss": _json_float(r.init_loss),
                        "num_params_free": r.num_params_free,
                        "mean_trace": [_json_float(x) for x in t],
                    }
                    for k, (r, t) in enumerate(per_ckpt)
                ],
            )
        )
    best, reason = recommend(entries)
    return CalibrationReport(entries, best, reason, config.to_dict())


def devinterp_init_loss(
    loss_fn: LossFn, model: nn.Module, batches: Iterable[Any], num_batches: int = 32
) -> float:
    """L(w*) the way devinterp 2.0.1's ``sample()`` measures it: the mean loss of the model
    over the first ``num_batches`` (its ``num_init_loss_batches``, default 32) minibatches of
    the sampling stream (by default every chain's loader is seeded alike, so one stream),
    once, unpaired with the draws. ``LLCResult.rebased(devinterp_init_loss(...))`` puts our
    draws on devinterp's footing (README "Trusting an LLC estimate")."""
    losses = []
    with torch.no_grad():
        for batch in itertools.islice(_BatchCycler(batches), num_batches):
            losses.append(float(loss_fn(model, batch)))
    return sum(losses) / len(losses)
