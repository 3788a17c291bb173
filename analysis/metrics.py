"""Per-checkpoint metrics: losses, norms, distance from init, gradient norm, Hessian trace.

Losses, accuracies and the gradient norm are computed on a bounded probe of each split:
its first ``max_examples`` examples, fewer where an example is large (at most
``max_tokens`` input elements, e.g. tokens, per split), so a language model's metrics
cost a forward and a backward over a fixed number of tokens, not over its whole training
set. The numbers are deterministic except the Hutchinson trace of the Hessian, which
reports its own standard error; it is optional (off by default for tasks on token data,
where each sample is a double backward through the model) and stops at a time budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .tasks.base import Batch, Task, layer_groups, to_device

LossFn = Callable[[nn.Module, Batch], Tensor]
Progress = Callable[[int, int, str], None]

# Probe bounds of checkpoint_metrics (per split).
MAX_EXAMPLES = 1024
MAX_TOKENS = 8192


def weight_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each layer's parameters (``weight_norm/<layer>``) and in total."""
    out: dict[str, float] = {}
    total = 0.0
    params = dict(model.named_parameters())
    for layer, names in layer_groups(model).items():
        sq = sum(float(params[n].detach().double().pow(2).sum()) for n in names)
        out[f"weight_norm/{layer}"] = math.sqrt(sq)
        total += sq
    out["weight_norm"] = math.sqrt(total)
    return out


def distance(model: nn.Module, reference_state: Mapping[str, Tensor]) -> float:
    """L2 distance between the model's parameters and the same names in ``reference_state``."""
    sq = 0.0
    for name, p in model.named_parameters():
        ref = reference_state[name].to(device=p.device, dtype=torch.float64)
        sq += float((p.detach().double() - ref).pow(2).sum())
    return math.sqrt(sq)


def gradient_norm(model: nn.Module, loss_fn: LossFn, batch: Batch) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model, batch), params)
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch,
    *,
    samples: int = 32,
    seed: int = 0,
    budget_s: float | None = None,
    progress: Progress | None = None,
) -> tuple[float, float, int]:
    """Hutchinson estimate of tr(H), its standard error and the samples it used.

    tr(H) = E[v^T H v] for Rademacher v; each sample costs one Hessian-vector product
    (double backward through the gradient, which is built once). With ``budget_s`` no
    new sample starts once that many seconds have passed (at least one is taken); the
    standard error is NaN with fewer than two. ``progress(done, samples, message)`` after
    each sample.
    """
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    estimates: list[float] = []
    for i in range(samples):
        if estimates and budget_s is not None and time.perf_counter() - t0 >= budget_s:
            break
        vs = [
            (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype)
            for p in params
        ]
        gv = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
        hvs = torch.autograd.grad(gv, params, retain_graph=i < samples - 1)
        estimates.append(float(sum((hv * v).sum() for hv, v in zip(hvs, vs, strict=True))))
        if progress is not None:
            progress(i + 1, samples, f"Hessian trace sample {i + 1}/{samples}")
    n = len(estimates)
    est = torch.tensor(estimates, dtype=torch.float64)
    se = float(est.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return float(est.mean()), se, n


def probe(batch: Batch, max_examples: int | None, max_tokens: int | None) -> Batch:
    """The first examples of a batch of equally long tensors: at most ``max_examples``,
    and at most ``max_tokens`` elements of its first tensor (tokens of a (N, T) batch);
    never fewer than one. None: no bound."""
    tensors = tuple(batch) if isinstance(batch, list | tuple) else (batch,)
    n = len(tensors[0])
    if max_examples is not None:
        n = min(n, max_examples)
    per_example = max(1, tensors[0][:1].numel())
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // per_example))
    cut = tuple(t[:n] for t in tensors)
    return type(batch)(cut) if isinstance(batch, list | tuple) else cut[0]


def checkpoint_metrics(
    task: Task,
    model: nn.Module,
    *,
    reference_state: Mapping[str, Tensor] | None = None,
    device: str | torch.device = "cpu",
    max_examples: int | None = MAX_EXAMPLES,
    max_tokens: int | None = MAX_TOKENS,
    hessian: bool | None = None,
    hutchinson_samples: int = 32,
    hessian_budget_s: float | None = 20.0,
    seed: int = 0,
    progress_measures: bool = True,
    progress: Progress | None = None,
) -> dict[str, float]:
    """All per-checkpoint metrics of ``model`` (already loaded with the checkpoint).

    ``reference_state`` is the run's first checkpoint; without it there is no
    ``distance_from_init``. Keys: train_loss, test_loss, train_acc/test_acc where
    defined, weight_norm, weight_norm/<layer>, distance_from_init, grad_norm,
    hessian_trace, hessian_trace_se, hessian_trace_samples, probe_examples (training
    examples in the probe), metrics_seconds (this call's time), and the task's progress
    measures as ``progress/<name>`` (``Task.progress_measures``; off with
    ``progress_measures=False``).

    Bounds: losses, accuracies, gradient norm and Hessian on ``probe`` of each split
    (``max_examples``, ``max_tokens``; None lifts a bound). ``hessian``: None (default)
    computes the Hutchinson trace except on token data (``task.uses_token_data``); it
    takes up to ``hutchinson_samples`` samples and starts none after ``hessian_budget_s``
    seconds (None: no time limit); ``hutchinson_samples=0`` also turns it off.
    ``progress(done, total, message)`` reports each stage and each Hessian sample.
    """
    t0 = time.perf_counter()
    if hessian is None:
        hessian = not getattr(task, "uses_token_data", False)
    hessian = hessian and hutchinson_samples > 0
    stages = 3 + (hutchinson_samples if hessian else 0) + (1 if progress_measures else 0)
    done = 0

    def step(message: str, count: int = 1) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(min(done, stages), stages, message)

    model = model.to(device)
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    batches = {
        split: to_device(probe(task.full_batch(split), max_examples, max_tokens), device)
        for split in ("train", "test")
    }
    with torch.no_grad():
        for split, batch in batches.items():
            out[f"{split}_loss"] = float(task.loss(model, batch))
            acc = task.accuracy(model, batch)
            if acc is not None:
                out[f"{split}_acc"] = float(acc)
    train = batches["train"]
    out["probe_examples"] = float(len(train[0] if isinstance(train, list | tuple) else train))
    step("losses")
    out.update(weight_norms(model))
    if reference_state is not None:
        out["distance_from_init"] = distance(model, reference_state)
    step("norms")
    out["grad_norm"] = gradient_norm(model, task.loss, train)
    step("gradient norm")
    if hessian:
        trace, se, n = hessian_trace(
            model, task.loss, train, samples=hutchinson_samples, seed=seed,
            budget_s=hessian_budget_s, progress=lambda i, total, msg: step(msg),
        )  # fmt: skip
        out["hessian_trace"], out["hessian_trace_se"] = trace, se
        out["hessian_trace_samples"] = float(n)
        done = 3 + hutchinson_samples  # samples the time budget skipped count as done
    if progress_measures:
        out.update({f"progress/{k}": float(v) for k, v in task.progress_measures(model).items()})
        step("progress measures")
    model.train(was_training)
    out["metrics_seconds"] = time.perf_counter() - t0
    return out
