"""The vectorised SGLD kernel: every (checkpoint, group, chain) row advances in one vmapped step."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from .config import DIAGNOSTIC_POINTS, LLCConfig, LossFn, ParamMask, Progress
from .layout import NoiseLayout, Pass, _free_names, build_passes
from .layout import largest_pass_rows as largest_pass_rows  # callers import these from here
from .layout import row_equivalents as row_equivalents

# A quantity recorded at draw steps (``_run_sgld(observables=...)``): f(model) -> Tensor.
Observable = Callable[[nn.Module], Tensor]

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
    ref: Tensor  # (K, G, C, D_ref) losses at w* on group g's chain c's batches at draws
    # 0, k, 2k, ... (k = ``reference_every``; D_ref = ceil(D / k))
    finite: Tensor  # (K, G, C) bool: the chain's weights stayed finite
    num_free: list[int]  # per group
    elapsed_s: float
    n_betas: list[float]  # per group
    diagnostics: dict[str, Tensor]  # name -> (K, G, C, P), at the draws ``diagnostic_draws``
    diagnostic_draws: list[int]
    # Observables at draw steps: one (K, G, C, D, *shape) tensor per observable given.
    observed: list[Tensor] = dataclasses.field(default_factory=list)


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
    observables: Sequence[Observable] = (),
    observe_every: int = 1,
    reference_every: int | None = None,
) -> _SamplerOutput:
    """Run K checkpoints x G groups x C chains (+ reference rows), vectorised.

    Every chain draws its own minibatches (chain c of every checkpoint and group gets the
    same ones, so comparisons between checkpoints/groups stay paired); its reference row
    evaluates L_m(w*) on exactly those minibatches. With ``group_batches`` (one iterable
    per group, ``batches`` unused) each group draws from its own, as a data-restricted
    estimate on that data alone would, and has its own reference rows.

    Groups that free the same tensors run as one pass (``analysis.llc.layout``): a vmap over
    checkpoints (the frozen tensors at that checkpoint's w*) of a vmap over the pass's
    group x chain rows (its free tensors, one flat buffer per pass). Frozen tensors are
    never copied per row, so a layer none of the pass's tensors touch is one matmul over
    all rows of a checkpoint rather than a batched matmul per row, and gradients are taken
    only for the pass's own tensors. Each step draws the minibatches and the noise once
    for all passes, and updates each pass's buffer in four whole-buffer operations.

    Sampling in bfloat16 computes the loss and its gradient in bfloat16 and keeps the
    weights and the update in float32 (master weights): an SGLD step can be below
    bfloat16's resolution of a weight, and updating bfloat16 weights would lose it. Losses
    are recorded in float32 (float64 when sampling in float64) whatever dtype the loss
    function returns; the noise is drawn in float32 for every dtype, so a float64 run
    follows the float32 run's chains without their rounding.

    ``observables``: callables ``f(model) -> Tensor`` evaluated at every draw step with each
    row's current weights swapped in (the weights its draw-step loss is taken at), vmapped
    over the rows like the step; ``observed[i]`` stacks observable i per row and draw.
    ``observe_every``: only every k-th draw (0, k, 2k, ...) is observed.

    ``reference_every`` (default ``config.reference_every``): the reference forward
    L_m(w*) runs at every k-th draw only (0, k, 2k, ...), so a chain's mean reference loss
    comes from D / k of its minibatches rather than being paired with each draw. Pairing
    removes the minibatch noise from each draw's difference; where the chains' own
    fluctuation dwarfs that noise (bench/precision.py's cases) it buys nothing, and a
    forward is about a third of a step's arithmetic.
    """
    t0 = time.perf_counter()
    device, dtype = torch.device(config.device), config.torch_dtype
    master = torch.float64 if dtype == torch.float64 else torch.float32
    record = master  # losses are kept in float32 (float64 when sampling in float64)
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
    if not _free_names(named, group_masks):
        raise ValueError("param_mask leaves no parameter free")
    all_names = list(named) + list(named_buffers)

    def stacked(n: str, to: torch.dtype) -> Tensor:  # (K, *shape); floating tensors in ``to``
        ts = [sd[n].detach() for sd in state_dicts]
        return torch.stack([t.to(device, to if t.is_floating_point() else None) for t in ts])

    # Every tensor at every checkpoint's w* in the compute dtype (the frozen tensors and the
    # reference rows), and the parameters in the master dtype (anchors and first weights).
    w_star = {n: stacked(n, dtype) for n in all_names}
    w_master = w_star if master == dtype else {n: stacked(n, master) for n in named}
    rmsprop = config.sampler == "rmsprop_sgld"
    passes, num_free = build_passes(
        named, {n: w_master[n] for n in named}, group_masks,
        {"lr": group_lr, "gamma": group_gamma, "nbeta": nbetas}, C, master, rmsprop,
    )  # fmt: skip
    for ps in passes:
        ps.fixed = {n: w_star[n] for n in all_names if n not in ps.names}
    alpha, rms_eps = config.rmsprop_alpha, config.rmsprop_eps

    wrapper = _LossModule(template, loss_fn)
    steps = [_pass_step(wrapper, ps, K) for ps in passes]
    pass_streams = [[stream_of[g] for g in ps.groups] for ps in passes]
    ref_loss = _reference_loss(wrapper, w_star, K)

    # --- observables at draw steps: f(model) with a row's weights, vmapped like the step.
    observe_fns = [_observe_fn(template, f, K) for f in observables]
    observed: list[list[Tensor]] = [[] for _ in observables]  # per draw, (K, G, C, *shape)

    # One noise draw per step over the whole model (``NoiseLayout``), shared by every
    # checkpoint and group: common random numbers, and a tensor's noise does not depend on
    # which other tensors are free.
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    noise_shape = (C, NoiseLayout.of(named).total)
    traces = torch.empty(D, K, G, C, device=device, dtype=record)
    if reference_every is None:
        reference_every = config.reference_every
    if not isinstance(reference_every, int) or reference_every < 1:
        raise ValueError(f"reference_every must be an integer >= 1, got {reference_every!r}")
    refs = torch.empty(-(-D // reference_every), K, len(streams), C, device=device, dtype=record)
    diag_draws = diagnostic_draws(D, DIAGNOSTIC_POINTS)
    diag_at = {d: i for i, d in enumerate(diag_draws)}
    dist = torch.zeros(len(diag_draws), K, G, C, device=device, dtype=record)  # |w - w*|
    gnorm = torch.zeros_like(dist)  # |grad L_m(w)|, both over the free coordinates
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
            noise = torch.randn(noise_shape, generator=gen, device=device).to(master)
            d, off = divmod(step - config.num_burnin_steps, config.num_steps_bw_draws)
            is_draw = d >= 0 and off == 0
            di = diag_at.get(d) if is_draw else None  # diagnostics only where a result keeps
            observe = is_draw and d % observe_every == 0 and bool(observables)
            if observe:
                now: list[Tensor | None] = [None] * len(observables)  # this draw's observables
            for ps, step_fn, streams_ in zip(passes, steps, pass_streams, strict=True):
                weights = ps.flat if master == dtype else ps.flat.to(dtype)
                grads, loss = step_fn(weights, _pass_batch(chain_batches, streams_, C))
                if is_draw:
                    traces[d, :, ps.index] = loss.view(K, ps.num_groups, C).to(record)
                if observe:
                    _observe(observe_fns, now, ps.views(weights), ps, K, G, C)  # pre-update
                grads = grads.view(K, ps.num_groups, C, -1)
                if di is not None:
                    _diagnose(ps, grads, dist[di], gnorm[di], C)
                if rmsprop:
                    _rmsprop_update(ps, grads, noise[:, ps.noise_at], C, alpha, rms_eps)
                else:
                    _sgld_update(ps, grads, noise[:, ps.noise_at], C)
            if is_draw and d % reference_every == 0:
                for s, b in enumerate(chain_batches):
                    refs[d // reference_every, :, s] = ref_loss(b)
            if observe:
                for draws, value in zip(observed, now, strict=True):
                    draws.append(value)
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == total):
                progress(step + 1, total, f"chain draws {max(d + 1, 0)}/{D}")

    chain_trace = traces.permute(1, 2, 3, 0).float().cpu()  # (K, G, C, D)
    ref = refs.permute(1, 2, 3, 0).float().cpu()[:, stream_of]  # (K, G, C, D_ref) per group
    finite = torch.ones(K, G, C, dtype=torch.bool)
    for ps in passes:
        ok = torch.isfinite(ps.flat).all(dim=-1).cpu().view(K, ps.num_groups, C)
        finite[:, ps.groups] = ok
    diag = {
        "distance": dist.sqrt().permute(1, 2, 3, 0).float().cpu(),
        "grad_norm": gnorm.sqrt().permute(1, 2, 3, 0).float().cpu(),
    }
    observed_out = [torch.stack(draws, dim=3).float().cpu() for draws in observed]
    return _SamplerOutput(
        chain_trace, ref, finite, num_free, time.perf_counter() - t0, nbetas, diag, diag_draws,
        observed_out,
    )  # fmt: skip


def _pass_step(wrapper: _LossModule, ps: Pass, K: int) -> Any:
    """``(flat, batch) -> (grads, losses)``: every row's gradient with respect to its flat
    weights (K, rows, N) and its minibatch loss (K, rows), one vmap over the rows inside
    one over checkpoints (with one checkpoint, none: frozen layers stay plain matmuls)."""

    def loss_at(row: Tensor, fixed: dict[str, Tensor], batch: Any) -> Tensor:
        return wrapper.loss_with({**ps.unflatten(row), **fixed}, batch)

    row_step = vmap(grad_and_value(loss_at), in_dims=(0, None, 0))
    if K > 1:
        both = vmap(row_step, in_dims=(0, 0, None))
        return lambda flat, batch: both(flat, ps.fixed, batch)
    fixed0 = {n: t[0] for n, t in ps.fixed.items()}

    def one(flat: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        grads, loss = row_step(flat[0], fixed0, batch)
        return grads.unsqueeze(0), loss.unsqueeze(0)

    return one


def _reference_loss(wrapper: _LossModule, w_star: dict[str, Tensor], K: int) -> Any:
    """``(C, ...) batch -> (K, C)``: checkpoint k's w* on chain c's minibatch."""
    chains = vmap(wrapper.loss_with, in_dims=(None, 0))
    if K > 1:
        return lambda batch: vmap(chains, in_dims=(0, None))(w_star, batch)
    at = {n: t[0] for n, t in w_star.items()}
    return lambda batch: chains(at, batch).unsqueeze(0)


def _sgld_update(ps: Pass, grads: Tensor, noise: Tensor, C: int) -> None:
    """w += -eps/2 (n_beta grad + gamma (w - w*)) + sqrt(eps) N(0, 1), in place on the
    pass's (K, G_p, C, N) buffer; the coefficients carry the masks."""
    K = ps.flat.shape[0]
    w = ps.flat.view(K, ps.num_groups, C, -1)
    w.mul_(ps.keep).add_(ps.shift)  # w + pull (w - w*)
    w.addcmul_(grads, ps.drift)
    w.addcmul_(noise, ps.noise)


def _rmsprop_update(
    ps: Pass, grads: Tensor, noise: Tensor, C: int, alpha: float, rms_eps: float
) -> None:
    """devinterp's RMSpropPreconditioner: v on the raw minibatch gradient; drift and noise
    scaled per coordinate by 1 / (sqrt(v) + eps) and its root; masked as a whole."""
    assert ps.square_avg is not None
    K = ps.flat.shape[0]
    w = ps.flat.view(K, ps.num_groups, C, -1)
    v = ps.square_avg.view(K, ps.num_groups, C, -1)
    v.mul_(alpha).addcmul_(grads, grads, value=1 - alpha)
    precond = v.sqrt().add_(rms_eps).reciprocal_()
    step = (ps.drift * grads + ps.pull * (w - ps.anchor)) * precond
    step += ps.noise * precond.sqrt() * noise
    if ps.mask is not None:
        step *= ps.mask
    w.add_(step)


def _diagnose(ps: Pass, grads: Tensor, dist: Tensor, gnorm: Tensor, C: int) -> None:
    """Squared distance from w* and squared gradient norm over each row's free coordinates,
    written into the draw's (K, G, C) ``dist`` and ``gnorm`` at the pass's groups."""
    K = ps.flat.shape[0]
    diff = ps.flat.view(K, ps.num_groups, C, -1) - ps.anchor
    sq_d, sq_g = diff.square(), grads.to(dist.dtype).square()
    if ps.mask is not None:
        sq_d, sq_g = sq_d * ps.mask, sq_g * ps.mask
    dist[:, ps.index] = sq_d.sum(-1).to(dist.dtype)
    gnorm[:, ps.index] = sq_g.sum(-1).to(gnorm.dtype)


# ---------------------------------------------------------------------------- observables


class _ObservableModule(nn.Module):
    """``f(model)`` as a module, so ``functional_call`` can swap a row's weights in."""

    def __init__(self, inner: nn.Module, fn: Observable) -> None:
        super().__init__()
        self.inner = inner
        self.fn = fn

    def forward(self) -> Tensor:
        return self.fn(self.inner)


def _observe_fn(template: nn.Module, fn: Observable, K: int) -> Any:
    """``(free, fixed) -> (K, rows, *shape)``: ``fn`` at every row of a pass, vmapped over
    the rows (free tensors per row) and, for several checkpoints, over checkpoints."""
    module = _ObservableModule(template, fn)

    def at(free: dict[str, Tensor], fixed: dict[str, Tensor]) -> Tensor:
        tensors = {"inner." + n: t for n, t in {**free, **fixed}.items()}
        return functional_call(module, tensors, ())

    rows = vmap(at, in_dims=(0, None))
    if K > 1:
        return vmap(rows, in_dims=(0, 0))
    return lambda free, fixed: rows(
        {n: w[0] for n, w in free.items()}, {n: t[0] for n, t in fixed.items()}
    ).unsqueeze(0)


def _observe(
    fns: list[Any], now: list[Tensor | None], params: dict[str, Tensor], ps: Pass,
    K: int, G: int, C: int,
) -> None:  # fmt: skip
    """Every observable at a pass's rows, scattered into this draw's (K, G, C, *shape)."""
    Gp = len(ps.groups)
    for i, fn in enumerate(fns):
        value = fn(params, ps.fixed)  # (K, G_p * C, *shape)
        shape = value.shape[2:]
        if now[i] is None:  # the draw's first pass allocates
            now[i] = value.new_empty(K, G, C, *shape)
        now[i][:, ps.index] = value.view(K, Gp, C, *shape)


def diagnostic_draws(num_draws: int, points: int) -> list[int]:
    """At most ``points`` evenly spaced draw indices, first and last included."""
    return sorted(
        {round(i * (num_draws - 1) / max(points - 1, 1)) for i in range(min(points, num_draws))}
    )
