"""Every task knows its chance-level loss and says where it comes from, so the LLC verdict's
"left the basin" can fire on a user's own language model too."""

from __future__ import annotations

import math

import pytest
import torch

from phaseboard.analysis.llc import LLCConfig, estimate_llc
from phaseboard.analysis.tasks import get_task
from phaseboard.analysis.verdict import ChanceLoss
from tests.generic_models import CTX, HF_CONFIGS, token_stream

ALLOW_TESTS = ["tests.generic_models:make_*"]


def test_a_token_task_without_data_falls_back_to_ln_vocab() -> None:
    task = get_task("hf_causal_lm", {"hf_config": HF_CONFIGS["gpt_neox"]})
    chance = task.chance_loss()
    assert isinstance(chance, ChanceLoss) and chance.source == "ln(vocab 50)"
    assert chance == pytest.approx(math.log(50))


def test_with_token_data_the_chance_is_the_unigram_entropy_of_the_training_targets() -> None:
    """Exact: windows of 4 tokens; the targets (positions 1..3) of the 3 windows hold
    token 1 six times and tokens 2, 3, 4 once each: H = -(6/9 ln 6/9 + 3 x 1/9 ln 1/9)."""
    stream = torch.tensor([0, 1, 1, 2, 0, 1, 1, 3, 0, 1, 1, 4])
    task = get_task("hf_causal_lm", {"hf_config": HF_CONFIGS["gpt2"], "seq_len": 4})
    task.set_token_data({"train": stream, "test": stream})
    chance = task.chance_loss()
    expected = -(6 / 9 * math.log(6 / 9) + 3 * (1 / 9) * math.log(1 / 9))
    assert chance == pytest.approx(expected, rel=1e-12)
    assert chance.source == "unigram entropy of 9 training tokens"
    assert chance < math.log(task.vocab_size())  # tighter than ln(vocab)
    # new data, new chance level (cached per dataset, not forever)
    task.set_token_data({"train": torch.arange(12) % 4, "test": stream})  # targets 1, 2, 3
    assert task.chance_loss() == pytest.approx(math.log(3), rel=1e-12)


def test_transformer_lens_task_knows_its_chance_level() -> None:
    cfg = {"n_layers": 1, "d_model": 16, "n_ctx": CTX, "d_head": 4, "n_heads": 4,
           "d_vocab": 50, "act_fn": "relu", "d_mlp": 32}  # fmt: skip
    task = get_task("transformer_lens", {"tl_config": cfg})
    assert task.chance_loss().source == "ln(vocab 50)"
    task.set_token_data({"train": token_stream(2000)})
    assert task.chance_loss().source.startswith("unigram entropy of")


def test_torch_module_on_its_own_data_uses_the_targets() -> None:
    reg = get_task(
        "torch_module",
        {"factory": "tests.generic_models:make_regressor", "loss": "mse",
         "data_factory": "tests.generic_models:make_regression_data"},
        allowed_factories=ALLOW_TESTS,
    )  # fmt: skip
    y = reg.full_batch("train")[1].double()
    chance = reg.chance_loss()
    assert chance == pytest.approx(float(y.var(unbiased=False)), rel=1e-9)  # predict the mean
    assert chance.source == "variance of 128 training targets"
    lm = get_task(
        "torch_module",
        {"factory": "tests.generic_models:make_lm", "seq_len": CTX},
        allowed_factories=ALLOW_TESTS,
    )
    lm.set_token_data({"train": token_stream(600)})
    assert lm.chance_loss().source.startswith("unigram entropy of")


def test_built_in_tasks_name_their_chance_level() -> None:
    assert get_task("modular_addition", {"p": 7}).chance_loss().source == "ln(7 classes)"
    assert get_task("attention_lm").chance_loss().source == "ln(vocab 32)"


def _trained_neox_vocab_500() -> object:
    """A small GPT-NeoX with a 500-token vocabulary trained until its
    loss is far below chance, on a stream where each token is often the previous + 1."""
    vocab = 500
    config = {**HF_CONFIGS["gpt_neox"], "vocab_size": vocab}
    task = get_task("hf_causal_lm", {"hf_config": config, "seq_len": CTX, "num_sequences": 128})
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, vocab, (20000,), generator=g)
    keep = torch.rand(20000, generator=g) < 0.8
    stream = noise.clone()
    for i in range(1, len(stream)):
        if keep[i]:
            stream[i] = (stream[i - 1] + 1) % vocab
    task.set_token_data({"train": stream})
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = task.full_batch("train")[0]
    model.train()
    for _ in range(200):
        batch = (data[torch.randint(0, len(data), (32,), generator=g)],)
        loss = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return task, model


@pytest.mark.slow
def test_left_the_basin_fires_on_a_language_model_at_too_large_an_lr() -> None:
    """A GPT-NeoX (vocab 500) sampled at lr 1e-2: the chains' mean loss rises above chance,
    which only a task that knows its chance level can call 'left the basin' (not 'ok')."""
    task, model = _trained_neox_vocab_500()
    with torch.no_grad():
        trained = float(task.loss(model, task.full_batch("train")))
    chance = task.chance_loss()
    assert trained < 0.5 * chance  # far below chance: a basin to leave
    cfg = LLCConfig(
        lr=1e-2, num_samples=task.num_train, localization=100.0, num_chains=4, num_draws=40,
        batch_size=16,
    )  # fmt: skip
    batches = task.batches("train", 16)
    res = estimate_llc(model, task.loss, batches, cfg, chance_loss=chance)
    assert res.verdict in ("left the basin", "diverged chains"), res.verdict_detail
    if res.verdict == "left the basin":
        assert "unigram entropy of" in res.verdict_detail
    assert res.chance_loss_source == chance.source
    assert res.to_dict()["chance_loss_source"] == chance.source
    # Without a chance level (as before) the same chains pass as an estimate.
    blind = estimate_llc(model, task.loss, task.batches("train", 16), cfg)
    assert blind.verdict not in ("left the basin", "diverged chains")
