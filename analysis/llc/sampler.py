"""The vectorised SGLD kernel: every (checkpoint, group, chain) row advances in one vmapped step."""

from __future__ import annotations

import copy
import itertools
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ..verdict import diverged_chains, judge
from .config import DIAGNOSTIC_POINTS, LLCConfig, LossFn, ParamMask, Progress
from .result import LLCResult, _json_float

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
