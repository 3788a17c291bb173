"""Per-checkpoint metrics: losses, norms, distance from init, gradient norm, Hessian trace.

Everything is computed on the task's full training batch (the small models this
project studies fit easily), so the numbers are deterministic except the Hutchinson
trace, which reports its own standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .tasks.base import Batch, Task, layer_groups, to_device

LossFn = Callable[[nn.Module, Batch], Tensor]


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
    model: nn.Module, loss_fn: LossFn, batch: Batch, *, samples: int = 32, seed: int = 0
) -> tuple[float, float]:
    """Hutchinson estimate of tr(H) and its standard error.

    tr(H) = E[v^T H v] for Rademacher v; each sample costs one Hessian-vector
    product (double backward through the gradient, which is built once).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    estimates = []
    for i in range(samples):
        vs = [
            (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype)
            for p in params
        ]
        gv = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
        hvs = torch.autograd.grad(gv, params, retain_graph=i < samples - 1)
        estimates.append(float(sum((hv * v).sum() for hv, v in zip(hvs, vs, strict=True))))
    est = torch.tensor(estimates, dtype=torch.float64)
    se = float(est.std(unbiased=True) / math.sqrt(samples)) if samples > 1 else float("nan")
    return float(est.mean()), se


def checkpoint_metrics(
    task: Task,
    model: nn.Module,
    *,
    reference_state: Mapping[str, Tensor] | None = None,
    device: str | torch.device = "cpu",
    hutchinson_samples: int = 32,
    seed: int = 0,
    progress_measures: bool = True,
) -> dict[str, float]:
    """All per-checkpoint metrics of ``model`` (already loaded with the checkpoint).

    ``reference_state`` is the run's first checkpoint; without it there is no
    ``distance_from_init``. Keys: train_loss, test_loss, train_acc/test_acc where
    defined, weight_norm, weight_norm/<layer>, distance_from_init, grad_norm,
    hessian_trace, hessian_trace_se, and the task's progress measures as
    ``progress/<name>`` (``Task.progress_measures``; off with ``progress_measures=False``).
    """
    model = model.to(device)
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    batches = {split: to_device(task.full_batch(split), device) for split in ("train", "test")}
    with torch.no_grad():
        for split, batch in batches.items():
            out[f"{split}_loss"] = float(task.loss(model, batch))
            acc = task.accuracy(model, batch)
            if acc is not None:
                out[f"{split}_acc"] = float(acc)
    out.update(weight_norms(model))
    if reference_state is not None:
        out["distance_from_init"] = distance(model, reference_state)
    train = batches["train"]
    out["grad_norm"] = gradient_norm(model, task.loss, train)
    if hutchinson_samples > 0:
        trace, se = hessian_trace(model, task.loss, train, samples=hutchinson_samples, seed=seed)
        out["hessian_trace"], out["hessian_trace_se"] = trace, se
    if progress_measures:
        out.update({f"progress/{k}": float(v) for k, v in task.progress_measures(model).items()})
    model.train(was_training)
    return out
