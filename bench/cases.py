"""The bench's models, trained once and cached under ``bench/out/`` (git-ignored).

Three cases, each a trained model at w* with its data, loss and the SGLD settings every
estimator in ``bench/precision.py`` shares:

- ``neox``: a GPT-NeoX causal LM (214k parameters at ``200k``, context 32) through the generic
  ``hf_causal_lm`` task, trained on 5,000 induction sequences until the loss sits well below
  chance (the first half of a sequence is random, so the floor is 15/31 of ln 500 = 3.0;
  chance is ln 500 = 6.2). 8 chains, batch 32, lr 1e-4, localization 100, n_beta = n / log n.
- ``modadd``: the demo's modular-addition transformer (``phaseboard demo``'s full config,
  p = 31), trained through memorisation into generalisation; the demo's LLC settings.
- ``dln``: a deep linear network at its most singular point, with the closed-form population
  loss of ``tests/science`` (no data noise), so its learning coefficient is Aoyagi's exact one.

A case's data is also given as plain tensors (``inputs``/``targets``), for the estimators
that take a dataset rather than an iterator of minibatches. ``burnin`` is the burn-in every
estimator runs: about the time the reference run's chains take to settle from w*.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUT = Path(__file__).resolve().parent / "out"

NEOX_SIZES = {  # name -> GPT-NeoX config (~params)
    "200k": {"vocab_size": 500, "hidden_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 4, "intermediate_size": 256},
    "3m": {"vocab_size": 2500, "hidden_size": 256, "num_hidden_layers": 3,
           "num_attention_heads": 8, "intermediate_size": 512},
}  # fmt: skip


@dataclass
class Case:
    """A trained model at w* and the SGLD settings every estimator of the bench shares.

    ``loss(model, batch)`` is the mean loss of a minibatch; ``batches(seed)`` yields
    minibatches of ``batch_size`` forever; ``inputs``/``targets`` hold the whole training
    set (``targets`` None for a language model, whose targets are its shifted inputs).
    ``per_example(model, inputs, targets)`` is the per-example loss as (B, T) for the
    estimators that average over token positions (one column when there is one target).
    """

    name: str
    model: nn.Module
    loss: Callable[[nn.Module, Any], Tensor]
    batches: Callable[[int], Iterator[Any]]
    inputs: Tensor
    targets: Tensor | None
    per_example: Callable[[nn.Module, Tensor, Tensor | None], Tensor]
    n: int  # training-set size: n_beta = n / log n unless given
    lr: float
    localization: float
    chains: int
    batch_size: int
    n_beta: float
    chance_loss: float | None = None
    exact_llc: float | None = None  # known in closed form (the DLN)
    burnin: int = 0  # SGLD steps every estimator discards before its draws
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def full_loss(self) -> float:
        """L(w*) over the whole training set, in slices of 512."""
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(self.inputs), 512):
                x = self.inputs[i : i + 512]
                y = None if self.targets is None else self.targets[i : i + 512]
                total += float(self.per_example(self.model, x, y).mean(1).sum())
        return total / len(self.inputs)


def _cached(path: Path, build: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """The state_dict at ``path``, or ``build()``'s, saved there first."""
    if path.exists():
        return torch.load(path, weights_only=True)
    state = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return state


# ---------------------------------------------------------------------------- neox


def induction_data(n: int, vocab: int, ctx: int, seed: int = 0) -> Tensor:
    """Sequences whose second half repeats the first: an induction task."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, vocab, (n, ctx // 2), generator=g)
    return torch.cat([first, first], dim=1)[:, :ctx]


def neox_case(
    size: str = "200k",
    *,
    ctx: int = 32,
    n: int = 5000,
    train_steps: int = 1500,
    chains: int = 8,
    batch_size: int = 32,
    lr: float = 1e-4,
    localization: float = 100.0,
    device: str = "cpu",
) -> Case:
    """The GPT-NeoX case, trained with Adam (lr 3e-3, batch 64) for ``train_steps``."""
    from phaseboard.analysis.tasks import get_task

    hf_config = {"model_type": "gpt_neox", "max_position_embeddings": ctx,
                 "bos_token_id": 0, "eos_token_id": 0, **NEOX_SIZES[size]}  # fmt: skip
    vocab = hf_config["vocab_size"]
    data = induction_data(n, vocab, ctx)
    task = get_task("hf_causal_lm", {"hf_config": hf_config, "seq_len": ctx, "num_sequences": n})
    task.set_token_data({"train": data, "test": induction_data(256, vocab, ctx, seed=1)})

    def train() -> dict[str, Tensor]:
        torch.manual_seed(0)
        model = task.build_model().to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for batch in itertools.islice(task.batches("train", 64, seed=1), train_steps):
            opt.zero_grad()
            task.loss(model, task.to(batch, device)).backward()
            opt.step()
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    path = OUT / f"neox_{size}_ctx{ctx}_n{n}_steps{train_steps}.pt"
    torch.manual_seed(0)
    model = task.build_model()
    model.load_state_dict(_cached(path, train))
    model = model.to(device).eval()
    train_tokens = task.full_batch("train")[0]

    def per_example(m: nn.Module, x: Tensor, _y: Tensor | None) -> Tensor:
        logits = task.logits(m, x.to(device)).float()
        return F.cross_entropy(
            logits[:, :-1].transpose(1, 2), x[:, 1:].to(device), reduction="none"
        )

    return Case(
        name=f"neox-{size}",
        model=model,
        loss=task.loss,
        batches=lambda seed: (task.to(b, device) for b in task.batches("train", batch_size, seed)),
        inputs=train_tokens,
        targets=None,
        per_example=per_example,
        n=n,
        lr=lr,
        localization=localization,
        chains=chains,
        batch_size=batch_size,
        n_beta=n / math.log(n),
        chance_loss=math.log(vocab),
        burnin=200,
        notes={"train_steps": train_steps, "hf_config": hf_config, "task": task},
    )


# ---------------------------------------------------------------------------- modadd


def modadd_case(*, lr: float = 3e-4, localization: float = 100.0, device: str = "cpu") -> Case:
    """The demo's modular-addition transformer (``phaseboard demo``'s full config), trained
    for its 3,000 steps; the demo's LLC settings (4 chains, batch 64, n_beta = n / log n)
    with the middle of its calibration grid's step sizes."""
    from phaseboard.analysis.tasks import get_task
    from phaseboard.server.commands.demo import FULL_CONFIG

    task = get_task("modular_addition", dict(FULL_CONFIG))

    def train() -> dict[str, Tensor]:
        last = None
        for point in task.train(checkpoint_steps=[FULL_CONFIG["steps"]]):
            if point.is_checkpoint:
                last = point.state_dict
        assert last is not None
        return last

    path = OUT / f"modadd_p{FULL_CONFIG['p']}_steps{FULL_CONFIG['steps']}.pt"
    model = task.build_model()
    model.load_state_dict(_cached(path, train))
    model = model.to(device).eval()
    tokens, labels = task.full_batch("train")
    batch_size = 64

    def per_example(m: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        assert y is not None
        return F.cross_entropy(m(x.to(device)).float(), y.to(device), reduction="none")[:, None]

    n = len(tokens)
    return Case(
        name="modadd",
        model=model,
        loss=task.loss,
        batches=lambda seed: (task.to(b, device) for b in task.batches("train", batch_size, seed)),
        inputs=tokens,
        targets=labels,
        per_example=per_example,
        n=n,
        lr=lr,
        localization=localization,
        chains=4,
        batch_size=batch_size,
        n_beta=n / math.log(n),
        chance_loss=task.chance_loss(),
        burnin=100,
        notes={"task": task},
    )


# ---------------------------------------------------------------------------- dln


class ProductDLN(nn.Module):
    """A deep linear network whose layers start at diag(1, .., 1, 0, ..) (``rank`` ones):
    the most singular realisation of a rank-``rank`` map. ``forward(x)`` ignores ``x`` and
    returns the end-to-end product (the population loss needs only that)."""

    def __init__(self, widths: list[int], rank: int) -> None:
        super().__init__()
        self.layers = nn.ParameterList()
        for d_in, d_out in zip(widths[:-1], widths[1:], strict=True):
            w = torch.zeros(d_out, d_in)
            w[range(rank), range(rank)] = 1.0
            self.layers.append(nn.Parameter(w))

    def forward(self, x: Tensor | None = None) -> Tensor:
        w = self.layers[0]
        for i in range(1, len(self.layers)):
            w = self.layers[i] @ w
        return w


def aoyagi_lambda(widths: list[int], rank: int) -> Fraction:
    """Aoyagi's learning coefficient of a DLN (the formula ``tests/science/aoyagi.py``
    checks against hand-worked cases)."""
    M = [h - rank for h in widths]
    idx = range(len(M))
    base = Fraction(-(rank**2) + rank * (widths[0] + widths[-1]), 2)
    for size in range(2, len(M) + 1):
        for sigma in itertools.combinations(idx, size):
            ell = size - 1
            inside = [M[j] for j in sigma]
            outside = [M[k] for k in idx if k not in sigma]
            S = sum(inside)
            min_out = min(outside) if outside else math.inf
            if not (max(inside) < min_out and ell * max(inside) <= S < ell * min_out):
                continue
            a = S - ell * (S // ell)
            pairs = sum(x * y for x, y in itertools.combinations(inside, 2))
            return (
                base
                + Fraction(a * (ell - a), 4 * ell)
                - Fraction(ell * (ell - 1), 4) * Fraction(S, ell) ** 2
                + Fraction(pairs, 2)
            )
    raise AssertionError(f"no admissible Sigma for widths={widths}, rank={rank}")


def dln_case(
    widths: tuple[int, ...] = (4, 2, 2, 4),
    rank: int = 0,
    *,
    n_beta: float = 300.0,
    lr: float = 4e-4,
    localization: float = 1.0,
    chains: int = 8,
    device: str = "cpu",
) -> Case:
    """A DLN at its most singular point with the population loss K(w) = 1/2 ||W - W0||^2
    (Gaussian inputs, unit noise): ``tests/science/test_llc_theory.py``'s settings; the gap
    between the reference run and Aoyagi's lambda is their localization bias. Its
    "minibatches" are dummies. The pull toward w* acts on a time scale of
    2 / (lr x localization) = 5,000 steps at these settings, so after the 500-step burn-in
    the chains are still rising: every estimator sits below the reference run (which
    discards 10,000 steps) by the same amount, a transient rather than noise."""
    model = ProductDLN(list(widths), rank).to(device)
    w0 = model().detach().clone()

    def loss(m: nn.Module, _batch: Any) -> Tensor:
        return 0.5 * ((m() - w0) ** 2).sum()

    def batches(_seed: int) -> Iterator[Any]:
        dummy = torch.zeros(1, 1, device=device)
        while True:
            yield dummy

    def per_example(m: nn.Module, x: Tensor, _y: Tensor | None) -> Tensor:
        return loss(m, None).expand(len(x), 1)

    lam = aoyagi_lambda(list(widths), rank)
    return Case(
        name=f"dln-{'-'.join(map(str, widths))}-r{rank}",
        model=model,
        loss=loss,
        batches=batches,
        inputs=torch.zeros(64, 2, dtype=torch.long),
        targets=torch.zeros(64, dtype=torch.long),
        per_example=per_example,
        n=int(n_beta),
        lr=lr,
        localization=localization,
        chains=chains,
        batch_size=1,
        n_beta=n_beta,
        exact_llc=float(lam),
        burnin=500,
        notes={"w0": w0, "widths": list(widths)},
    )


def rrr_case(device: str = "cpu") -> Case:
    """Reduced-rank regression (a DLN 6-4-5, N = 6 inputs, H = 4, M = 5 outputs) at w* = 0:
    the smallest model, where a step is all per-op overhead."""
    case = dln_case((6, 4, 5), 0, device=device)
    case.name = "rrr-6-4-5"
    return case


CASES: dict[str, Callable[..., Case]] = {
    "neox": neox_case, "modadd": modadd_case, "dln": dln_case, "rrr": rrr_case,
}  # fmt: skip
