"""The Task base class: how to turn a state_dict into a model, data and a loss.

A task bundles everything the worker needs to analyse a checkpoint (model
architecture, deterministic datasets, the loss, named weight groups) and a
small training loop that produces a real trajectory for demos and tests.
Subclasses set ``name`` and ``default_config`` and implement ``build_model``,
``_make_datasets`` and ``loss``; everything else has a sensible default here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Batch = Any  # a tensor, or a tuple/list/dict of tensors
ParamMask = dict[str, Tensor | None]  # same shape as analysis.restrict.ParamMask
# Generator seed of ``Task.shared_probe``: fixed, so it never follows a run's data seed.
PROBE_SEED = 0xED


class CheckpointMismatch(ValueError):
    """A state_dict does not fit the task's model; the message lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("checkpoint does not match the model:\n  " + "\n  ".join(problems))


class TensorDataset:
    """A tuple of equally long tensors; indexing returns a tuple (or a batch of them)."""

    def __init__(self, *tensors: Tensor) -> None:
        assert tensors and all(len(t) == len(tensors[0]) for t in tensors)
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int | slice | Tensor) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def subset(self, keep: Tensor) -> TensorDataset:
        """The rows where the bool tensor ``keep`` is True."""
        return TensorDataset(*(t[keep] for t in self.tensors))


@dataclass
class TrainPoint:
    """One logged step of a training run; ``state_dict`` only at checkpoint steps."""

    step: int
    metrics: dict[str, float]
    state_dict: dict[str, Tensor] | None = None

    @property
    def is_checkpoint(self) -> bool:
        return self.state_dict is not None


def to_device(batch: Batch, device: str | torch.device) -> Batch:
    """Move a tensor or a (nested) tuple/list/dict of tensors to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def log_spaced_steps(total: int, count: int, offset: float = 1.0) -> list[int]:
    """Exactly ``count`` distinct integer steps in [0, total], from 0 to ``total``, spaced
    evenly in log(step + offset) (``total + 1`` steps when ``count`` exceeds that).

    Rounding collisions at the dense end are pushed to the next free integer, so there are
    no duplicates and no near-duplicates from merging two grids; a larger ``offset`` moves
    checkpoints from the first few steps towards the later ones.
    """
    if total <= 0 or count <= 1:
        return [0] if total <= 0 or count <= 0 else [total]
    count = min(count, total + 1)
    lo, hi = math.log(offset), math.log(total + offset)
    steps = [round(math.exp(lo + (hi - lo) * i / (count - 1)) - offset) for i in range(count)]
    steps[0], steps[-1] = 0, total
    for i in range(1, count):  # strictly increasing...
        steps[i] = max(steps[i], steps[i - 1] + 1)
    for i in range(count - 2, -1, -1):  # ...and still ending at total
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return steps


def layer_groups(model: nn.Module) -> dict[str, ParamMask]:
    """One weight group per module that owns parameters (``{param_name: None}``)."""
    groups: dict[str, ParamMask] = {}
    for name, _ in model.named_parameters():
        layer = name.rsplit(".", 1)[0] if "." in name else name
        groups.setdefault(layer, {})[name] = None
    return groups


def head_mask(param: Tensor, head: int) -> Tensor:
    """Bool mask selecting ``param[head]`` (per-head parameters have heads first)."""
    mask = torch.zeros_like(param, dtype=torch.bool)
    mask[head] = True
    return mask


class Task:
    """Base class of all tasks; see the module docstring."""

    name: str = "task"
    default_config: dict[str, Any] = {}
    # train() logs losses on at most this many examples per split (None: all of them)
    eval_max_examples: int | None = None

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        unknown = sorted(set(config) - set(self.default_config))
        if unknown:
            raise ValueError(
                f"unknown config key(s) for task {self.name!r}: {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(self.default_config))}"
            )
        self.config: dict[str, Any] = {**self.default_config, **config}
        self.validate_config(self.config)
        self._datasets: dict[str, TensorDataset] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # --- to implement -------------------------------------------------------------

    def validate_config(self, config: dict[str, Any]) -> None:
        """Raise ValueError on values that cannot work (override per task)."""

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        raise NotImplementedError

    def _make_datasets(self) -> dict[str, TensorDataset]:
        """All splits and subsets, deterministic from ``config['seed']``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        raise NotImplementedError

    def accuracy(self, model: nn.Module, batch: Batch) -> float | None:
        """Fraction correct, or None where accuracy is undefined (regression tasks)."""
        return None

    def chance_loss(self) -> float | None:
        """The loss of guessing (e.g. ln(classes) for cross-entropy), or None if unknown.

        The LLC verdict uses it to flag chains that left the basin (``analysis.verdict``).
        """
        return None

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """The model's outputs on ``batch`` as the lenses compare them (essential dynamics).

        Default: ``model(inputs)``, inputs the batch's first tensor. Classification
        tasks return log-probabilities, so an additive shift of the logits is no motion.
        """
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        return model(inputs)

    def per_example_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Loss of each example of ``batch``, shape (n,) (the learning-order lens).

        Default: ``loss`` on each example alone, vectorised with ``torch.func.vmap`` over
        the batch's tensors (``loss`` is vmap-friendly by contract).
        """
        tensors = tuple(batch) if isinstance(batch, list | tuple) else (batch,)

        def one(*example: Tensor) -> Tensor:
            single = tuple(t.unsqueeze(0) for t in example)
            return self.loss(model, single if isinstance(batch, list | tuple) else single[0])

        return torch.func.vmap(one)(*tensors)

    # True where examples are token sequences with a loss per position (``per_token_loss``):
    # the influence lenses then work per token.
    has_tokens: bool = False

    def per_token_loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """(n, T) loss of each example at each position, NaN where a position has no target
        (token tasks only, ``has_tokens``); vmap-friendly like ``loss``."""
        raise NotImplementedError(f"task {self.name!r} has no per-token loss")

    def describe_examples(self, batch: Batch) -> list[str]:
        """A short text per example of ``batch`` (influence views list examples by it).

        Default: the first tensor's row as numbers (token ids for token tasks), and the
        second tensor's row after an arrow where there is one (a label or target).
        """
        tensors = tuple(batch) if isinstance(batch, list | tuple) else (batch,)

        def text(row: Tensor) -> str:
            values = row.flatten().tolist()
            shown = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in values[:48]]
            return " ".join(shown) + (" …" if len(values) > 48 else "")

        out = []
        for i in range(len(tensors[0])):
            s = text(tensors[0][i])
            if len(tensors) > 1 and tensors[1].dim() <= 2:
                s += " → " + text(tensors[1][i])
            out.append(s)
        return out

    def progress_measures(self, model: nn.Module) -> dict[str, float]:
        """Named per-checkpoint measures of what the model has learned (default none).

        Computed by the metrics job and shown as series ``progress/<name>``; their jumps
        are phase-boundary candidates. User tasks override this to add their own.
        """
        return {}

    # --- data ----------------------------------------------------------------------

    def datasets(self) -> dict[str, TensorDataset]:
        """``train``, ``test`` and named subsets; built once and cached."""
        if self._datasets is None:
            self._datasets = self._make_datasets()
        return self._datasets

    def data_subsets(self) -> list[str]:
        """Names of the datasets other than train and test."""
        return [k for k in self.datasets() if k not in ("train", "test")]

    @property
    def num_train(self) -> int:
        """Training-set size n (the LLC's default n_beta is n / log n)."""
        return len(self.datasets()["train"])

    @staticmethod
    def to(batch: Batch, device: str | torch.device) -> Batch:
        """Move a batch (as yielded by ``batches``) to ``device``."""
        return to_device(batch, device)

    def full_batch(self, split: str = "train") -> tuple[Tensor, ...]:
        return self._dataset(split)[:]

    def batches(
        self,
        split: str = "train",
        batch_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> Iterator[tuple[Tensor, ...]]:
        """Endless batches of ``split``; ``batch_size=None`` repeats the full batch."""
        data = self._dataset(split)
        n = len(data)
        if batch_size is None or batch_size >= n:
            full = data[:]
            while True:
                yield full
        gen = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
            for start in range(0, n - batch_size + 1, batch_size):
                yield data[order[start : start + batch_size]]

    def _dataset(self, split: str) -> TensorDataset:
        data = self.datasets()
        if split not in data:
            raise KeyError(f"task {self.name!r} has no data split {split!r}; has {list(data)}")
        return data[split]

    def shared_probe(self, n: int) -> tuple[Tensor, ...] | None:
        """``n`` inputs every run of this task sees alike whatever its data seed (drawn from
        the task's whole input distribution with a fixed generator), so runs that differ only
        in their seed can be compared function to function (essential dynamics on one
        picture). None (the default): the lenses probe the test split instead."""
        return None

    # --- weights -------------------------------------------------------------------

    def weight_groups(self, model: nn.Module) -> dict[str, ParamMask]:
        """Named weight subsets for restricted LLCs; per layer by default."""
        return layer_groups(model)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the model's state_dict, checked against every upload.

        Built on the meta device (no weights allocated, no init work) and cached per task
        instance; a task whose model cannot be built there falls back to a real build.
        Override where even that is too expensive (e.g. compute it from a config).
        """
        cached = getattr(self, "_expected_shapes", None)
        if cached is None:
            try:
                with torch.device("meta"):
                    model = self.build_model()
            except Exception:  # noqa: BLE001 - some constructors need real tensors
                model = self.build_model()
            cached = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            self._expected_shapes = cached
        return dict(cached)

    def load_state_dict(self, model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
        """Strictly load ``state_dict``; raise CheckpointMismatch naming every problem."""
        own = model.state_dict()
        problems = [f"{k}: missing from checkpoint" for k in own if k not in state_dict]
        problems += [f"{k}: unexpected in checkpoint" for k in state_dict if k not in own]
        for k, v in state_dict.items():
            if k in own and tuple(v.shape) != tuple(own[k].shape):
                problems.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        if problems:
            raise CheckpointMismatch(problems)
        model.load_state_dict(dict(state_dict), strict=True)
        return model

    # --- training ------------------------------------------------------------------

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(
            model.parameters(), lr=c["lr"], weight_decay=c.get("weight_decay", 0.0)
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Train/test loss (full batch, capped by ``eval_max_examples``) and accuracies."""
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        for split in ("train", "test"):
            batch = self._dataset(split)[: self.eval_max_examples]
            metrics[f"{split}_loss"] = float(self.loss(model, batch))
            acc = self.accuracy(model, batch)
            if acc is not None:
                metrics[f"{split}_acc"] = acc
        model.train(was_training)
        return metrics

    def train(
        self,
        *,
        steps: int | None = None,
        checkpoint_steps: list[int] | None = None,
        callback: Callable[[TrainPoint], None] | None = None,
        seed: int | None = None,
    ) -> Iterator[TrainPoint]:
        """Train from scratch, yielding a TrainPoint at every eval and checkpoint step.

        Defaults come from the config: ``steps``, ``num_checkpoints`` (log-spaced),
        ``eval_every``, ``batch_size`` (None = full batch), ``lr``, ``seed``.
        """
        c = self.config
        steps = c["steps"] if steps is None else steps
        seed = c["seed"] if seed is None else seed
        if checkpoint_steps is None:
            checkpoint_steps = log_spaced_steps(steps, c["num_checkpoints"])
        ckpts = set(checkpoint_steps)
        eval_every = max(1, c["eval_every"])

        torch.manual_seed(seed)
        model = self.build_model()
        model.train()
        opt = self.make_optimizer(model)
        batches = self.batches("train", c.get("batch_size"), seed=seed)
        for step in range(steps + 1):
            if step in ckpts or step % eval_every == 0 or step == steps:
                state = (
                    {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if step in ckpts
                    else None
                )
                point = TrainPoint(step, self.evaluate(model), state)
                if callback is not None:
                    callback(point)
                yield point
            if step == steps:
                break
            loss = self.loss(model, next(batches))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


__all__ = [
    "Batch",
    "CheckpointMismatch",
    "ParamMask",
    "Task",
    "TensorDataset",
    "TrainPoint",
    "head_mask",
    "layer_groups",
    "log_spaced_steps",
    "to_device",
]
