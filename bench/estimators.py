"""The LLC estimators ``bench/precision.py`` compares, behind one interface.

Each estimator runs a case (``bench/cases.py``) at a number of draws and a seed and returns
its chains' loss at every draw, what it subtracts from them (a paired reference per chain
and draw, or one init loss), and the wall time of the call. Every one runs the case's SGLD
settings (lr, localization, n_beta, chains, batch size; no burn-in, one step per draw), and
the case's burn-in, one step per draw), so they estimate the same quantity and differ only
in how (and how fast) they do it:

- ``phaseboard``: ``estimate_llc`` with its default settings (its bias checks run two more
  groups of chains in the same call, where the config has them);
- ``phaseboard-fast``: ``estimate_llc`` without the bias-check groups;
- ``phaseboard-bf16``: the same, sampling in bfloat16 (float32 master weights);
- ``phaseboard-fastest``: the sampler in bfloat16 without bias checks and with the
  reference forward at every 10th draw only (a ``_run_sgld`` argument no config field
  reaches yet);
- ``devinterp``: devinterp 2.0.1 ``llc()`` (one chain after another; its init loss on 32
  minibatches; its estimate averages the burn-in steps' losses too, as its ``llc()`` does);
- ``canonical``: canonical-interp 0.2.7 ``LLCEstimator`` (chains vmapped, the step
  ``torch.compile``d, its default; init loss over the whole dataset);
- ``sequential``: ``bench/sequential_sgld.py``, the minimal loop (L(w*) on the training set).

devinterp and canonical-interp are bench-only dependencies (the ``bench`` extra); an
estimator whose package is missing reports why and is skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from cases import Case
from sequential_sgld import sequential_sgld
from torch import Tensor, nn

from phaseboard.analysis.llc import LLCConfig, estimate_llc
from phaseboard.analysis.llc import estimate as _estimate_module
from phaseboard.analysis.llc.sampler import _run_sgld


@dataclass
class Run:
    """One call's chains: ``trace`` (C, kept + D) the loss at each draw (devinterp's also at
    its ``kept`` burn-in steps, which its estimate averages too); ``init`` (C, D) the
    paired reference L_m(w*) on the same minibatches, or (1, 1) one init loss."""

    trace: Tensor
    init: Tensor
    n_beta: float
    seconds: float
    kept: int = 0

    def estimate(self, draws: int) -> float:
        """The LLC the call would have returned had it stopped after ``draws`` draws
        (SGLD is causal: the first draws do not depend on how many follow)."""
        return float(self.per_chain(draws).mean())

    def per_chain(self, draws: int) -> Tensor:
        """Each chain's estimate after ``draws`` draws (C,); against one init loss, every
        chain subtracts the same number."""
        chains = self.trace[:, : self.kept + draws].double().mean(1)
        init = self.init[:, :draws].double().mean(1)
        return self.n_beta * (chains - init)


Estimator = Callable[[Case, int, int], Run]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- phaseboard


def _config(case: Case, draws: int, seed: int, device: str, **extra: Any) -> LLCConfig:
    fields = {f.name for f in dataclasses.fields(LLCConfig)}
    return LLCConfig(
        lr=case.lr, n_beta=case.n_beta, localization=case.localization,
        num_chains=case.chains, num_draws=draws, num_burnin_steps=case.burnin,
        batch_size=case.batch_size, seed=seed, device=device,
        **{k: v for k, v in extra.items() if k in fields},
    )  # fmt: skip


class _Recorder:
    """Keeps the last sampler output ``estimate_llc`` produced (its per-draw reference
    losses are not part of an ``LLCResult``)."""

    def __init__(self) -> None:
        self.inner = _estimate_module._run_sgld
        self.last: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.last = self.inner(*args, **kwargs)
        return self.last


def phaseboard(fast: bool, device: str = "cpu", dtype: str = "float32") -> Estimator:
    """``estimate_llc`` as a user calls it; ``fast``: without the bias-check groups;
    ``dtype``: the sampling dtype (bfloat16 keeps float32 master weights)."""
    extra: dict[str, Any] = {"dtype": dtype, **({"bias_checks": False} if fast else {})}

    def run(case: Case, draws: int, seed: int) -> Run:
        recorder = _Recorder()
        _estimate_module._run_sgld = recorder
        try:
            _sync(device)
            t0 = time.perf_counter()
            estimate_llc(
                case.model, case.loss, case.batches(seed),
                _config(case, draws, seed, device, **extra), chance_loss=case.chance_loss,
            )  # fmt: skip
            _sync(device)
            seconds = time.perf_counter() - t0
        finally:
            _estimate_module._run_sgld = recorder.inner
        out = recorder.last
        return Run(out.traces[0, 0], out.ref[0, 0], out.n_betas[0], seconds)

    return run


def phaseboard_kernel(
    device: str = "cpu", dtype: str = "bfloat16", reference_every: int = 10
) -> Estimator:
    """The sampler at its fastest settings: bias checks off, ``dtype`` (bfloat16: float32
    master weights) and the reference forward at every ``reference_every``-th draw only
    (``LLCConfig.reference_every``)."""

    def run(case: Case, draws: int, seed: int) -> Run:
        cfg = _config(case, draws, seed, device, dtype=dtype, bias_checks=False)
        sd = {**dict(case.model.named_parameters()), **dict(case.model.named_buffers())}
        _sync(device)
        t0 = time.perf_counter()
        out = _run_sgld(
            case.model, case.loss, case.batches(seed), cfg, [sd], [None], [cfg.lr],
            [cfg.localization], None, reference_every=min(reference_every, draws),
        )  # fmt: skip
        _sync(device)
        seconds = time.perf_counter() - t0
        init = out.ref[0, 0].mean(1, keepdim=True)  # (C, 1): each chain's mean reference
        return Run(out.traces[0, 0], init, out.n_betas[0], seconds)

    return run


# ---------------------------------------------------------------------------- devinterp


def devinterp_missing() -> str | None:
    if importlib.util.find_spec("devinterp") is None:
        return "devinterp not installed (pip install 'phaseboard[bench]')"
    return None


def devinterp(device: str = "cpu") -> Estimator:
    """devinterp 2.0.1 ``llc()``: a Hugging Face dataset of ``input_ids``; a case whose
    targets are not its shifted inputs passes them as the last token and a per-token loss
    that puts each example's loss on every position (devinterp averages over positions)."""
    from datasets import Dataset
    from devinterp.slt.llc import llc

    def run(case: Case, draws: int, seed: int) -> Run:
        if case.targets is None:  # a language model: devinterp's own next-token loss
            ids, loss_fn = case.inputs, None
        else:
            ids = torch.cat([case.inputs, case.targets[:, None]], dim=1)

            def loss_fn(model: nn.Module, input_ids: Tensor) -> Tensor:
                x, y = input_ids[:, :-1], input_ids[:, -1]
                per = case.per_example(model, x, y)[:, 0]
                return per[:, None].expand(len(x), input_ids.shape[1] - 1)

        ds = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
        # Its samples go to a zarr store; left to itself, devinterp makes a temporary
        # directory per call and never removes it.
        with tempfile.TemporaryDirectory() as tmp:
            _sync(device)
            t0 = time.perf_counter()
            res = llc(
                case.model, ds, {}, lr=case.lr, n_beta=case.n_beta,
                localization=case.localization, num_chains=case.chains, num_draws=draws,
                batch_size=case.batch_size, device=device, init_seed=seed, loss_fn=loss_fn,
                num_burnin_steps=case.burnin, output_path=f"{tmp}/samples.zarr",
            )  # fmt: skip
            _sync(device)
            seconds = time.perf_counter() - t0
            trace = torch.as_tensor(res.loss_trace.values)  # (chain, burn-in + draws)
            init = torch.tensor([[float(res.init_loss)]])
        return Run(trace, init, case.n_beta, seconds, kept=case.burnin)

    return run


# ---------------------------------------------------------------------------- canonical


def canonical_missing() -> str | None:
    if importlib.util.find_spec("canonical_interp") is None:
        return "canonical-interp not installed (see pyproject's bench extra)"
    return None


def _import_canonical() -> Any:
    """canonical_interp.slt, on Python 3.11 too: it declares Python >= 3.12 for one
    function, ``itertools.batched`` (3.12), which it uses only to split chains across
    devices; the stand-in below does the same."""
    if not hasattr(itertools, "batched"):

        def batched(iterable: Any, n: int) -> Any:
            it = iter(iterable)
            while chunk := tuple(itertools.islice(it, n)):
                yield chunk

        itertools.batched = batched  # type: ignore[attr-defined]
    from canonical_interp import slt

    return slt


class _Logits(nn.Module):
    """``forward(x)`` -> what a case's per-example loss reads, for canonical-interp's
    ``criterion(model(x), y)``: a Hugging Face model's logits as a tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(input_ids=x, use_cache=False).logits


def canonical(device: str = "cpu", compile: bool | str = "reduce-overhead") -> Estimator:
    """canonical-interp 0.2.7 ``LLCEstimator.estimate_llc`` (``compile`` its default)."""
    import logging

    from torch.utils.data import DataLoader, TensorDataset

    slt = _import_canonical()
    logging.getLogger("canonical_interp").setLevel(logging.ERROR)  # its DataLoader advice

    def run(case: Case, draws: int, seed: int) -> Run:
        if case.targets is None:  # next-token loss: the targets are the inputs, shifted
            data = TensorDataset(case.inputs, case.inputs)

            def criterion(logits: Tensor, y: Tensor) -> Tensor:
                return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), y[:, 1:].flatten())

            model: nn.Module = _Logits(case.model)
        elif case.exact_llc is not None:  # the DLN: the population loss needs no data
            data = TensorDataset(case.inputs, case.targets)
            w0 = case.notes["w0"]

            def criterion(product: Tensor, _y: Tensor) -> Tensor:
                return 0.5 * ((product - w0) ** 2).sum()

            model = case.model
        else:
            data = TensorDataset(case.inputs, case.targets)

            def criterion(logits: Tensor, y: Tensor) -> Tensor:
                return F.cross_entropy(logits.float(), y)

            model = case.model
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(data, batch_size=case.batch_size, shuffle=True, generator=gen)
        est = slt.LLCEstimator(
            draws=draws, chains=case.chains, burnin_steps=case.burnin, learning_rate=case.lr,
            localization=case.localization, nbeta=case.n_beta,
        )  # fmt: skip
        _sync(device)
        t0 = time.perf_counter()
        est.estimate_llc(
            model, loader, criterion_fn=criterion, devices=device, seed=seed,
            compile=compile, show_progress=False,
        )  # fmt: skip
        _sync(device)
        seconds = time.perf_counter() - t0
        metrics = est.get_metrics()
        init = torch.tensor([[float(est.original_loss)]])
        return Run(metrics["losses"], init, case.n_beta, seconds)

    return run


# ---------------------------------------------------------------------------- sequential


def sequential(device: str = "cpu") -> Estimator:
    """``bench/sequential_sgld.py``: one chain after another, plain autograd."""

    def run(case: Case, draws: int, seed: int) -> Run:
        _sync(device)
        out = sequential_sgld(
            case.model, case.loss, case.batches, lr=case.lr, n_beta=case.n_beta,
            localization=case.localization, chains=case.chains, draws=draws, seed=seed,
            burnin=case.burnin, full_loss=case.full_loss,
        )  # fmt: skip
        _sync(device)
        assert out.init_loss is not None
        return Run(out.trace, torch.tensor([[out.init_loss]]), case.n_beta, out.seconds)

    return run
