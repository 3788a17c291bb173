"""Tiny models and data for the generic-task tests: built locally, never downloaded.

Also the installed "user code" of the ``torch_module`` tests: ``make_lm`` and
``make_regressor`` are factories, ``make_regression_data`` a data factory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VOCAB, CTX = 50, 16

# Tiny configs of the three attention layouts (d_model 32, 2 layers, 4 heads).
HF_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "vocab_size": VOCAB, "n_positions": CTX, "n_embd": 32,
             "n_layer": 2, "n_head": 4, "bos_token_id": 0, "eos_token_id": 0},
    "gpt_neox": {"model_type": "gpt_neox", "vocab_size": VOCAB, "max_position_embeddings": CTX,
                 "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 64, "bos_token_id": 0, "eos_token_id": 0},
    "llama": {"model_type": "llama", "vocab_size": VOCAB, "max_position_embeddings": CTX,
              "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "bos_token_id": 0,
              "eos_token_id": 0},
}  # fmt: skip


def hf_model(family: str, seed: int = 0) -> nn.Module:
    import transformers

    from phaseboard.analysis.tasks.hf_causal_lm import hf_config_from_dict

    torch.manual_seed(seed)
    config = hf_config_from_dict(HF_CONFIGS[family])
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def token_stream(n: int, seed: int = 0) -> Tensor:
    """A learnable stream: each token is often (previous + 1) mod VOCAB."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.7
    out = noise.clone()
    for i in range(1, n):
        if keep[i]:
            out[i] = (out[i - 1] + 1) % VOCAB
    return out


def train_steps(model: nn.Module, tokens: Tensor, steps: int, seed: int = 0) -> None:
    """A few AdamW steps of next-token loss on windows of ``tokens``."""
    windows = tokens[: (len(tokens) // CTX) * CTX].view(-1, CTX)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = windows[torch.randint(0, len(windows), (16,), generator=g)]
        logits = model(input_ids=batch).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def save_trainer_checkpoint(model: Any, out_dir: Path, step: int) -> Path:
    """``checkpoint-{step}/`` laid out as ``transformers.Trainer`` writes it."""
    folder = out_dir / f"checkpoint-{step}"
    model.save_pretrained(folder)  # config.json, generation_config.json, model.safetensors
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": None, "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    torch.save({"output_dir": str(out_dir)}, folder / "training_args.bin")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


# --- torch_module "user code" -------------------------------------------------------------


class TinyLM(nn.Module):
    """Embedding -> MLP -> unembedding, position-wise: (B, T) ids -> (B, T, V) logits."""

    def __init__(self, vocab: int, d: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.unembed = nn.Linear(d, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        return self.unembed(x + self.mlp(x))


def make_lm(vocab: int = VOCAB, d: int = 16) -> nn.Module:
    return TinyLM(vocab, d)


def make_regressor(d_in: int = 3, hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def make_regression_data(n: int = 128, d_in: int = 3) -> dict[str, tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, d_in, generator=g)
    y = x.sum(dim=1, keepdim=True).tanh()
    return {
        "train": (x[:n], y[:n]),
        "test": (x[n:], y[n:]),
        "positive": (x[:n][x[:n, 0] > 0], y[:n][x[:n, 0] > 0]),
    }
