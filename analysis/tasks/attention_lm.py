"""Induction heads in a 2-layer attention-only transformer (Olsson et al. 2022).

Sequences of random tokens each contain one span copied from earlier in the
sequence. Tokens inside the copy are predictable only by an induction circuit
(a previous-token head in layer 0 composed with an induction head in layer 1),
so the loss on them drops in a visible stage once the circuit forms (default config,
measured: repeated-token accuracy 0.19 at step 800, 0.74 at 1000, 0.87 at 1500).
``train_acc``/``test_acc`` are next-token accuracies on the repeated tokens only.

A batch is ``(tokens, targets, repeated)``: ``tokens`` (B, T), ``targets`` (B, T)
the next token (``-1`` at the last position), ``repeated`` (B, T) bool, True
where the target is the second occurrence of a copied span.
Parameters: ``embed.weight`` (V, d), ``pos_embed`` (T, d),
``blocks.{l}.W_Q/W_K/W_V`` (H, d, d_head), ``blocks.{l}.W_O`` (H, d_head, d),
``unembed.weight`` (V, d). Head ``l{l}.h{h}`` is slice ``[h]`` of those four.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._transformer import Attention, attention_head_names
from .base import ParamMask, Task, TensorDataset, head_mask, layer_groups


class AttentionOnlyTransformer(nn.Module):
    def __init__(self, vocab: int, seq_len: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos_embed = nn.Parameter(torch.randn(seq_len, d_model) / d_model**0.5)
        self.blocks = nn.ModuleList(
            Attention(d_model, n_heads, d_model // n_heads) for _ in range(n_layers)
        )
        self.unembed = nn.Linear(d_model, vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        x = self.embed(tokens) + self.pos_embed[:T]  # (B, T, d)
        for attn in self.blocks:
            x = x + attn(x)
        return self.unembed(x)  # (B, T, V)


def make_sequences(
    n: int, vocab: int, seq_len: int, span: tuple[int, int], gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random sequences, each with one span of length in ``span`` copied later on."""
    tokens = torch.randint(vocab, (n, seq_len), generator=gen)
    repeated = torch.zeros(n, seq_len, dtype=torch.bool)
    lengths = torch.randint(span[0], span[1] + 1, (n,), generator=gen).tolist()
    for i, k in enumerate(lengths):
        src = int(torch.randint(0, seq_len - 2 * k + 1, (1,), generator=gen))
        dst = int(torch.randint(src + k, seq_len - k + 1, (1,), generator=gen))
        tokens[i, dst : dst + k] = tokens[i, src : src + k]
        repeated[i, dst + 1 : dst + k] = True  # position t holds token t; predicted from t-1
    targets = torch.cat([tokens[:, 1:], torch.full((n, 1), -1)], dim=1)
    repeated_target = torch.cat([repeated[:, 1:], torch.zeros(n, 1, dtype=torch.bool)], dim=1)
    return tokens, targets, repeated_target


class AttentionLM(Task):
    name = "attention_lm"
    default_config: dict[str, Any] = {
        "vocab": 32,
        "seq_len": 32,
        "span_min": 6,
        "span_max": 12,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "num_samples": 4096,
        "num_test": 512,
        "lr": 3e-3,
        "weight_decay": 0.0,
        "batch_size": 64,
        "steps": 2000,
        "num_checkpoints": 40,
        "eval_every": 50,
        "seed": 0,
    }
    eval_max_examples = 512  # logging during train() only; metrics use the full split

    def validate_config(self, config: dict[str, Any]) -> None:
        if config["d_model"] % config["n_heads"]:
            raise ValueError("d_model must be divisible by n_heads")
        if not 2 <= config["span_min"] <= config["span_max"] <= config["seq_len"] // 2:
            raise ValueError("need 2 <= span_min <= span_max <= seq_len // 2")

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        c = {**self.config, **(config or {})}
        return AttentionOnlyTransformer(
            c["vocab"], c["seq_len"], c["d_model"], c["n_layers"], c["n_heads"]
        )

    def _make_datasets(self) -> dict[str, TensorDataset]:
        c = self.config
        gen = torch.Generator().manual_seed(c["seed"])
        span = (c["span_min"], c["span_max"])
        n = c["num_samples"] + c["num_test"]
        tokens, targets, repeated = make_sequences(n, c["vocab"], c["seq_len"], span, gen)
        cut = c["num_samples"]
        train = TensorDataset(tokens[:cut], targets[:cut], repeated[:cut])
        test = TensorDataset(tokens[cut:], targets[cut:], repeated[cut:])
        tok, tgt, rep = train.tensors
        valid = tgt >= 0
        # Same training sequences; the subset lives in which targets count.
        return {
            "train": train,
            "test": test,
            "repeated_tokens": TensorDataset(tok, torch.where(rep, tgt, -1), rep),
            "first_occurrence": TensorDataset(tok, torch.where(valid & ~rep, tgt, -1), rep),
        }

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        tokens, targets, _ = batch
        logits = model(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

    def per_example_loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """Mean next-token loss of each sequence over its targets."""
        tokens, targets, _ = batch
        loss = F.cross_entropy(
            model(tokens).float().transpose(1, 2), targets.clamp(min=0), reduction="none"
        )
        valid = (targets >= 0).float()
        return (loss * valid).sum(1) / valid.sum(1).clamp(min=1)

    has_tokens = True

    def per_token_loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """(n, T) next-token loss at each position; NaN where the position has no target."""
        tokens, targets, _ = batch
        loss = F.cross_entropy(
            model(tokens).float().transpose(1, 2), targets.clamp(min=0), reduction="none"
        )
        return torch.where(targets >= 0, loss, torch.nan)

    def describe_examples(self, batch: tuple[Tensor, ...]) -> list[str]:
        """The token ids of each sequence (random tokens: there is no text to decode)."""
        return [" ".join(str(t) for t in row.tolist()) for row in batch[0]]

    def outputs(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        return F.log_softmax(model(batch[0]).float(), dim=-1)

    @torch.no_grad()
    def chance_loss(self) -> float | None:
        from ..verdict import ChanceLoss

        vocab = self.config["vocab"]
        return ChanceLoss(math.log(vocab), f"ln(vocab {vocab})")  # a uniform guess

    def accuracy(self, model: nn.Module, batch: tuple[Tensor, ...]) -> float | None:
        """Next-token accuracy on the repeated (induction-predictable) tokens."""
        tokens, targets, repeated = batch
        keep = repeated & (targets >= 0)
        if not keep.any():
            return None
        return (model(tokens).argmax(-1)[keep] == targets[keep]).float().mean().item()

    def progress_measures(self, model: nn.Module) -> dict[str, float]:
        """Prefix-matching score of each head of the last layer on repeated random
        sequences (``prefix_matching/l{L}.h{h}`` and their max), and the ICL score on the
        first 128 test sequences (loss on the last quarter of positions minus the first)."""
        from ..progress import icl_score, prefix_matching_scores

        c = self.config
        layer = c["n_layers"] - 1
        out: dict[str, float] = {}
        if layer >= 1:
            scores = prefix_matching_scores(model, c["vocab"], c["seq_len"], layer=layer)
            out = {f"prefix_matching/l{layer}.h{h}": s for h, s in enumerate(scores)}
            out["prefix_matching"] = max(scores)
        tokens, targets, _ = self.full_batch("test")
        out["icl_score"] = icl_score(model, tokens[:128], targets[:128])
        return out

    def weight_groups(self, model: nn.Module) -> dict[str, ParamMask]:
        groups = layer_groups(model)
        c = self.config
        for name, layer, h in attention_head_names(c["n_layers"], c["n_heads"]):
            block = model.blocks[layer]
            groups[name] = {
                f"blocks.{layer}.{w}": head_mask(getattr(block, w), h)
                for w in ("W_Q", "W_K", "W_V", "W_O")
            }
        return groups
