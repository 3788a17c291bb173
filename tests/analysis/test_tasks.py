"""Task registry and the built-in tasks, on tiny configs."""

from __future__ import annotations

import itertools

import pytest
import torch

from phaseboard.analysis import llc
from phaseboard.analysis.tasks import (
    CheckpointMismatch,
    Task,
    TrainPoint,
    UnknownTask,
    get_task,
    list_tasks,
    log_spaced_steps,
)

TINY: dict[str, dict] = {
    "dln": {"widths": [4, 3, 4], "true_rank": 2, "num_samples": 64, "num_test": 32, "steps": 20},
    "modular_addition": {"p": 7, "d_model": 8, "n_heads": 2, "d_mlp": 16, "steps": 20},
    "tms": {"n_features": 5, "n_hidden": 2, "num_samples": 128, "num_test": 64, "steps": 20},
    "attention_lm": {
        "vocab": 8,
        "seq_len": 12,
        "span_min": 3,
        "span_max": 5,
        "d_model": 8,
        "n_heads": 2,
        "num_samples": 64,
        "num_test": 16,
        "batch_size": 16,
        "steps": 20,
    },
}
FAST = {"num_checkpoints": 5, "eval_every": 10}


def tiny(name: str, **extra: object) -> Task:
    return get_task(name, {**TINY[name], **FAST, **extra})


def test_registry_lists_builtins_and_rejects_unknown_names_helpfully() -> None:
    assert {"dln", "modular_addition", "tms", "attention_lm"} <= set(list_tasks())
    with pytest.raises(UnknownTask) as err:
        get_task("no_such_task")
    assert "no_such_task" in str(err.value) and "modular_addition" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_entry_point_tasks_are_loaded_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    import phaseboard.analysis.tasks as registry

    class EP:
        name = "custom"

        def load(self):  # noqa: ANN201 - mimics importlib.metadata.EntryPoint
            class Custom(type(tiny("dln"))):
                name = "custom"

            return Custom

    monkeypatch.setattr(registry, "_entry_points", lambda: {"custom": EP()})
    assert "custom" in list_tasks()
    task = get_task("custom", TINY["dln"])
    assert task.name == "custom" and task.config["true_rank"] == 2


def test_unknown_config_key_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown config key.*'?widht"):
        get_task("dln", {"widht": [2, 2]})


@pytest.mark.parametrize("name", sorted(TINY))
def test_task_contract(name: str) -> None:
    task = tiny(name)
    assert task.config["seed"] == 0 and task.name == name
    data = task.datasets()
    assert {"train", "test"} <= set(data) and task.data_subsets()
    assert task.num_train == len(data["train"]) > 0
    for subset in task.data_subsets():
        assert len(data[subset]) > 0

    # deterministic from the seed
    again = tiny(name).full_batch("train")
    for a, b in zip(task.full_batch("train"), again, strict=True):
        assert torch.equal(a, b)

    torch.manual_seed(0)
    model = task.build_model()
    batch = next(task.batches("train", batch_size=8, seed=1))
    loss = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for split in ["train", "test", *task.data_subsets()]:
        full = task.full_batch(split)
        assert torch.isfinite(task.loss(model, full))
    acc = task.accuracy(model, task.full_batch("test"))
    assert acc is None or 0.0 <= acc <= 1.0

    # batches cycle forever
    assert len(list(itertools.islice(task.batches("train", batch_size=16), 50))) == 50

    groups = task.weight_groups(model)
    params = dict(model.named_parameters())
    assert groups
    for group in groups.values():
        for pname, mask in group.items():
            assert pname in params
            assert mask is None or (mask.dtype == torch.bool and mask.shape == params[pname].shape)


@pytest.mark.parametrize("name", ["modular_addition", "attention_lm"])
def test_attention_head_groups_partition_the_attention_weights(name: str) -> None:
    task = tiny(name)
    model = task.build_model()
    heads = {k: v for k, v in task.weight_groups(model).items() if ".h" in k}
    n_layers = task.config.get("n_layers", 1)
    assert len(heads) == n_layers * task.config["n_heads"]
    assert "l0.h0" in heads
    params = dict(model.named_parameters())
    totals: dict[str, torch.Tensor] = {}
    for group in heads.values():
        for pname, mask in group.items():
            totals[pname] = totals.get(pname, torch.zeros_like(mask, dtype=torch.int)) + mask
    assert totals and all(bool((t == 1).all()) for t in totals.values())  # disjoint, covering
    assert all(totals[p].shape == params[p].shape for p in totals)


def test_load_state_dict_names_every_mismatch() -> None:
    task = tiny("modular_addition")
    model = task.build_model()
    state = dict(task.build_model().state_dict())
    task.load_state_dict(model, state)  # round trip is fine
    state["embed.weight"] = torch.zeros(10, 8)
    del state["pos_embed"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch) as err:
        task.load_state_dict(model, state)
    msg = str(err.value)
    assert "embed.weight: checkpoint (10, 8) vs model (8, 8)" in msg
    assert "pos_embed: missing" in msg and "extra.weight: unexpected" in msg
    assert len(err.value.problems) == 3


@pytest.mark.parametrize("name", sorted(TINY))
def test_train_yields_metrics_and_checkpoints(name: str) -> None:
    task = tiny(name)
    seen: list[TrainPoint] = []
    points = list(task.train(callback=seen.append))
    assert points == seen
    assert [p.step for p in points] == sorted({p.step for p in points})
    assert points[0].step == 0 and points[-1].step == 20
    ckpts = [p for p in points if p.is_checkpoint]
    assert [p.step for p in ckpts] == log_spaced_steps(20, 5)
    assert {"train_loss", "test_loss"} <= set(points[-1].metrics)
    model = task.build_model()
    task.load_state_dict(model, ckpts[-1].state_dict)
    assert task.evaluate(model)["train_loss"] == pytest.approx(points[-1].metrics["train_loss"])


def test_train_reduces_loss_and_custom_checkpoints() -> None:
    task = tiny("dln", steps=200, lr=0.05, init_scale=0.3)
    points = list(task.train(checkpoint_steps=[0, 100]))
    assert [p.step for p in points if p.is_checkpoint] == [0, 100]
    assert points[-1].metrics["train_loss"] < 0.5 * points[0].metrics["train_loss"]


def test_log_spaced_steps() -> None:
    steps = log_spaced_steps(10_000, 40)
    assert steps[0] == 0 and steps[-1] == 10_000 and 30 <= len(steps) <= 40
    assert steps == sorted(set(steps))


def test_head_groups_work_as_llc_param_masks() -> None:
    task = tiny("attention_lm")
    model = task.build_model()
    config = llc.LLCConfig(lr=1e-4, num_chains=2, num_draws=5, num_samples=task.num_train)
    mask = task.weight_groups(model)["l1.h0"]
    result = llc.estimate_llc(model, task.loss, task.batches("train", 16), config, param_mask=mask)
    d_head = task.config["d_model"] // task.config["n_heads"]
    assert result.num_params_free == 4 * task.config["d_model"] * d_head
    assert len(result.per_chain) == 2


def test_last_position_attention_equals_the_full_causal_attention_there() -> None:
    """Modular addition reads out only at "=": attending from that position alone (what its
    forward does) gives the full causal attention's last row, bit for bit here (tolerance
    1e-6 for other BLAS builds)."""
    from phaseboard.analysis.tasks._transformer import Attention

    torch.manual_seed(0)
    attn = Attention(16, 4, 4)
    x = torch.randn(8, 5, 16)
    full, last = attn(x)[:, -1:], attn(x, last_only=True)
    assert last.shape == (8, 1, 16)
    torch.testing.assert_close(last, full, rtol=1e-6, atol=1e-6)
    # Not a no-op: a middle position's output differs from the last one's.
    assert not torch.allclose(attn(x)[:, 2], full[:, 0])
