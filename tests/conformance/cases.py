"""The tasks of the conformance matrix: one tiny case per built-in task (three Hugging Face
layouts), built from configs with random weights; token data made here.

``case_ids()`` covers every name ``list_tasks()`` returns: a task without a case of its own
here (a newly installed entry point) gets ``default_case``, its default config, so it joins
the matrix by existing. Checkpoints are points on a straight path through weight space
(``base + t * direction``), so a run's checkpoints differ the way a trajectory's do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from phaseboard.analysis.tasks import get_task, list_tasks
from tests.generic_models import CTX, HF_CONFIGS, VOCAB, token_stream

# The torch_module factories the conformance server allows (PHASEBOARD_MODEL_FACTORIES).
MODEL_FACTORIES = "tests.generic_models:make_*"
STEPS = (0, 10, 100)  # the growing run's checkpoints, uploaded one at a time


@dataclass(frozen=True)
class Case:
    """A task with a tiny config, and the token data it analyses on (if it needs any)."""

    id: str
    task: str
    config: dict[str, Any]
    datasets: dict[str, np.ndarray] = field(default_factory=dict)

    def checkpoints(self, steps: tuple[int, ...] = STEPS) -> list[dict[str, torch.Tensor]]:
        """One state_dict per step on a straight path from a random init."""
        task = get_task(self.task, self.config, allowed_factories=[MODEL_FACTORIES])
        torch.manual_seed(0)
        base = task.build_model().state_dict()
        gen = torch.Generator().manual_seed(1)
        direction = {
            k: torch.randn(v.shape, generator=gen) * 0.05
            for k, v in base.items()
            if v.is_floating_point()
        }
        out = []
        for i, _ in enumerate(steps):
            out.append(
                {
                    k: (v + i * direction[k]).contiguous() if k in direction else v.clone()
                    for k, v in base.items()
                }
            )
        return out


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


TOKENS = {
    "train": token_stream(1200).numpy().astype(np.int32),
    "test": token_stream(400, seed=1).numpy().reshape(25, CTX),
    "code": token_stream(400, seed=2).numpy(),  # a data subset: a data-restricted LLC
}
TOKEN_SIZES = {"seq_len": CTX, "num_sequences": 32, "num_test_sequences": 16}
TL_CONFIG = {
    "n_layers": 2,
    "d_model": 16,
    "n_ctx": CTX,
    "d_head": 8,
    "n_heads": 2,
    "d_vocab": VOCAB,
    "act_fn": "gelu",
}

CASES: list[Case] = [
    Case("dln", "dln", {"widths": [3, 3, 2], "num_samples": 64, "num_test": 32, "true_rank": 2}),
    Case(
        "modular_addition", "modular_addition", {"p": 11, "d_model": 16, "n_heads": 2, "d_mlp": 32}
    ),
    Case("tms", "tms", {"num_samples": 256, "num_test": 128}),
    Case(
        "attention_lm",
        "attention_lm",
        {
            "vocab": 16,
            "seq_len": 12,
            "span_min": 2,
            "span_max": 4,
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "num_samples": 128,
            "num_test": 64,
        },
    ),
    *[
        Case(f"hf_causal_lm:{family}", "hf_causal_lm", {"hf_config": cfg, **TOKEN_SIZES}, TOKENS)
        for family, cfg in HF_CONFIGS.items()
    ],
    Case("transformer_lens", "transformer_lens", {"tl_config": TL_CONFIG, **TOKEN_SIZES}, TOKENS),
    Case(
        "torch_module",
        "torch_module",
        {"factory": "tests.generic_models:make_lm", "kwargs": {"d": 8}, **TOKEN_SIZES},
        TOKENS,
    ),
    Case(
        "torch_module:regression",
        "torch_module",
        {
            "factory": "tests.generic_models:make_regressor",
            "loss": "mse",
            "data_factory": "tests.generic_models:make_regression_data",
        },
    ),
]


def default_case(task: str) -> Case:
    """A task without a case of its own: its default config (token data if it wants any)."""
    probe = get_task(task, {}, allowed_factories=[MODEL_FACTORIES])
    return Case(task, task, {}, TOKENS if getattr(probe, "uses_token_data", False) else {})


def case_ids() -> list[str]:
    """Every case of the matrix: the tiny ones above, and each installed task they miss."""
    covered = {c.task for c in CASES}
    return [c.id for c in CASES] + [t for t in list_tasks() if t not in covered]


def get_case(case_id: str) -> Case:
    for case in CASES:
        if case.id == case_id:
            return case
    return default_case(case_id)
