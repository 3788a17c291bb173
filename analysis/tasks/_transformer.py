"""Small transformer pieces with per-head parameters, so head slices are well defined.

Parameter layout (Nanda et al. / TransformerLens style, heads first):
  ``W_Q, W_K, W_V``: (n_heads, d_model, d_head)   ``W_O``: (n_heads, d_head, d_model)
Head ``h`` of a layer is exactly ``W_Q[h], W_K[h], W_V[h], W_O[h]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Causal multi-head self-attention without biases."""

    def __init__(self, d_model: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.W_Q = nn.Parameter(torch.randn(n_heads, d_model, d_head) / math.sqrt(d_model))
        self.W_K = nn.Parameter(torch.randn(n_heads, d_model, d_head) / math.sqrt(d_model))
        self.W_V = nn.Parameter(torch.randn(n_heads, d_model, d_head) / math.sqrt(d_model))
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) / math.sqrt(d_head * n_heads))

    def forward(self, x: Tensor, last_only: bool = False) -> Tensor:
        """(B, T, d) -> (B, T, d); with ``last_only`` just the last position's output
        (B, 1, d), which sees every position: the same numbers for a model that reads out
        only there, at a third of the attention cost for 3-token inputs."""
        if last_only:
            return self._last_position(x)
        B, T, d = x.shape
        H, _, dh = self.W_Q.shape
        w_qkv = torch.cat([_by_columns(w) for w in self.qkv()], dim=1)
        q, k, v = (x @ w_qkv).split(H * dh, dim=-1)
        q, k, v = (t.view(B, T, H, dh).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
        att = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf"))
        z = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * dh)
        return z @ self.W_O.reshape(H * dh, d)

    def _last_position(self, x: Tensor) -> Tensor:
        """The last query against every key, with products and sums rather than matmuls
        over (B x H) tiny matrices: under vmap over SGLD rows those become batched matmuls
        of (dh x 1) by (1 x T) blocks, far slower than the same arithmetic elementwise."""
        B, T, d = x.shape
        H, _, dh = self.W_Q.shape
        # Under vmap an embedding's output is laid out (rows, tokens, checkpoints, d): one
        # copy here instead of one in each projection's matmul and in each one's backward.
        x = x.contiguous()
        # Separate projections: splitting one fused matmul costs a stack in the backward.
        q, k, v = (_by_columns(w) for w in self.qkv())
        q = (x[:, -1] @ q).view(B, 1, H, dh)
        k, v = ((x @ w).view(B, T, H, dh) for w in (k, v))
        att = (q * k).sum(-1) / math.sqrt(dh)  # (B, T, H)
        z = (att.softmax(1).unsqueeze(-1) * v).sum(1)  # (B, H, dh)
        return z.reshape(B, 1, H * dh) @ self.W_O.reshape(H * dh, d)

    def qkv(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.W_Q, self.W_K, self.W_V


def _by_columns(w: Tensor) -> Tensor:
    """A projection's (H, d, dh) weights as (d, H * dh): one matmul for every head instead
    of a batched einsum."""
    H, d, dh = w.shape
    return w.permute(1, 0, 2).reshape(d, H * dh)


def attention_head_names(n_layers: int, n_heads: int) -> list[tuple[str, int, int]]:
    """``("l{layer}.h{head}", layer, head)`` for every head."""
    return [(f"l{i}.h{h}", i, h) for i in range(n_layers) for h in range(n_heads)]
