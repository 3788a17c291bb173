"""Progress measures: what a model has learned, per checkpoint, in the task's own terms.

* Modular addition (Nanda et al. 2023, "Progress measures for grokking via mechanistic
  interpretability"): the embedding's Fourier spectrum over the residues, its *key
  frequencies*, the **restricted loss** (logits keep only the key-frequency directions
  ``cos/sin(w_k (a + b))``) and the **excluded loss** (those directions removed), both on
  the training pairs, and the Gini coefficient of the Fourier norms (sparsity).
* Induction (Olsson et al. 2022): the **prefix-matching score** of each attention head on
  repeated random sequences (the built-in ``attention_lm`` reads its last layer's heads;
  the generic language-model tasks read every head from the attention patterns their
  framework returns), and the **in-context-learning score** (loss late in the context
  minus loss early in it).
* Toy model of superposition: the number of features represented (column norm of ``W``
  above a threshold) and how far they are from a regular k-gon.

Pure functions of a model (and its task's config); the tasks' ``progress_measures``
hooks call them, the metrics job stores them as ``progress/<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gini(x: Tensor) -> float:
    """Gini coefficient of non-negative values: 0 all equal, -> 1 all mass in one."""
    v = x.detach().double().flatten().abs().sort().values
    n = v.numel()
    if n == 0 or float(v.sum()) == 0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * ranks - n - 1) * v).sum() / (n * v.sum()))


# --- modular addition ---------------------------------------------------------------


def fourier_norms(embed: Tensor) -> Tensor:
    """Norm of the embedding's Fourier component per frequency k = 1 .. p // 2.

    ``embed`` (p, d): one row per residue. Frequency k and p - k are conjugate, so they
    are one frequency here.
    """
    p = embed.shape[0]
    spectrum = torch.fft.rfft(embed.detach().double(), dim=0)  # (p // 2 + 1, d)
    return spectrum[1 : p // 2 + 1].abs().pow(2).sum(-1).sqrt()


def key_frequencies(embed: Tensor, n_key: int = 5) -> list[int]:
    """The ``n_key`` frequencies (1 .. p // 2) with the largest embedding Fourier norm."""
    norms = fourier_norms(embed)
    top = norms.argsort(descending=True)[:n_key]
    return sorted(int(k) + 1 for k in top)


def _sum_basis(p: int, freqs: Sequence[int], device: torch.device) -> Tensor:
    """Orthonormal columns cos/sin(2 pi k (a + b) / p) over the p*p grid of pairs (a, b)."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    s = (a + b).double().to(device)
    cols = []
    for k in freqs:
        w = 2 * math.pi * k * s / p
        cols += [torch.cos(w), torch.sin(w)]
    basis = torch.stack(cols, 1)  # (p*p, 2K)
    return basis / basis.norm(dim=0, keepdim=True)


@torch.no_grad()
def restricted_excluded_loss(
    model: nn.Module, p: int, train_tokens: Tensor, train_labels: Tensor, freqs: Sequence[int]
) -> tuple[float, float]:
    """(restricted, excluded) cross-entropy on the training pairs.

    Logits over all p*p pairs (p*p, p) are split along the key-frequency directions of
    the pair grid: restricted = the grid mean + the part along the directions; excluded =
    the logits minus that part. Both are read at the training pairs.
    """
    device = next(model.parameters()).device
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    tokens = torch.stack([a, b, torch.full_like(a, p)], 1).to(device)
    logits = model(tokens).double()  # (p*p, p)
    basis = _sum_basis(p, freqs, device)
    mean = logits.mean(0, keepdim=True)
    along = basis @ (basis.T @ (logits - mean))
    index = (train_tokens[:, 0] * p + train_tokens[:, 1]).to(device)
    labels = train_labels.to(device)
    restricted = F.cross_entropy((mean + along)[index], labels)
    excluded = F.cross_entropy((logits - along)[index], labels)
    return float(restricted), float(excluded)


def modular_addition_measures(
    model: nn.Module,
    p: int,
    train_tokens: Tensor,
    train_labels: Tensor,
    *,
    key_freqs: Sequence[int] | None = None,
    n_key: int = 5,
) -> dict[str, float]:
    """Restricted/excluded loss, Fourier Gini and top frequency of one checkpoint.

    ``key_freqs`` None: this checkpoint's own ``n_key`` strongest embedding frequencies
    (per checkpoint, so the job needs no other checkpoint; once the circuit has formed
    they are the final model's).
    """
    embed = model.embed.weight[:p]
    norms = fourier_norms(embed)
    freqs = list(key_freqs) if key_freqs is not None else key_frequencies(embed, n_key)
    restricted, excluded = restricted_excluded_loss(model, p, train_tokens, train_labels, freqs)
    return {
        "restricted_loss": restricted,
        "excluded_loss": excluded,
        "fourier_gini": gini(norms),
        "top_frequency": float(int(norms.argmax()) + 1),
    }


# --- induction ----------------------------------------------------------------------


def _attention_pattern(attn: nn.Module, x: Tensor) -> Tensor:
    """Causal attention pattern (B, H, T, T) of an ``analysis.tasks._transformer.Attention``."""
    dh = attn.W_Q.shape[-1]
    q = torch.einsum("btd,hde->bhte", x, attn.W_Q)
    k = torch.einsum("btd,hde->bhte", x, attn.W_K)
    att = q @ k.transpose(-1, -2) / math.sqrt(dh)
    T = x.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return att.masked_fill(~causal, float("-inf")).softmax(-1)


def repeated_random_tokens(vocab: int, seq_len: int, n_seq: int, seed: int = 0) -> Tensor:
    """(n_seq, 2 * (seq_len // 2)) ids: a random first half, then that half once more."""
    half = seq_len // 2
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(vocab, (n_seq, half), generator=gen)
    return torch.cat([first, first], 1)


def prefix_matching_from_pattern(pattern: Tensor) -> list[float]:
    """Per head: the prefix-matching score from one layer's attention pattern (B, H, T, T)
    on ``repeated_random_tokens`` (T = 2 * half).

    The mean, over the second half's positions ``half + j`` (j < half - 1) and the
    sequences, of the attention to position ``j + 1``: the token right after the current
    token's first occurrence.
    """
    half = pattern.shape[-1] // 2
    queries = torch.arange(half, 2 * half - 1, device=pattern.device)  # second occurrences
    keys = queries - half + 1  # the token after the first occurrence
    return pattern[:, :, queries, keys].float().mean((0, 2)).tolist()


def per_head_measures(scores: Sequence[Sequence[float]], layers: Sequence[int]) -> dict[str, float]:
    """``prefix_matching/l{layer}.h{h}`` for ``scores[i][h]`` of ``layers[i]``, and their max
    as ``prefix_matching`` (the names the run page's progress view groups per head)."""
    out = {
        f"prefix_matching/l{layer}.h{h}": float(s)
        for layer, row in zip(layers, scores, strict=True)
        for h, s in enumerate(row)
    }
    if out:
        out["prefix_matching"] = max(out.values())
    return out


@torch.no_grad()
def prefix_matching_scores(
    model: nn.Module, vocab: int, seq_len: int, *, layer: int = 1, n_seq: int = 64, seed: int = 0
) -> list[float]:
    """Per head of ``layer``: mean attention from a token's second occurrence to the token
    right after its first occurrence, on sequences of a random half repeated once.

    Olsson et al.'s prefix-matching score; 1 for a perfect induction head, about
    1 / (position) for uniform attention.
    """
    device = next(model.parameters()).device
    tokens = repeated_random_tokens(vocab, seq_len, n_seq, seed).to(device)  # (B, 2*half)
    x = model.embed(tokens) + model.pos_embed[: tokens.shape[1]]
    for attn in model.blocks[:layer]:
        x = x + attn(x)
    return prefix_matching_from_pattern(_attention_pattern(model.blocks[layer], x))


@torch.no_grad()
def hf_prefix_matching_scores(model: nn.Module, tokens: Tensor) -> list[list[float]] | None:
    """Per layer, per head: prefix-matching scores of a ``transformers`` causal LM on
    ``tokens`` from ``repeated_random_tokens``, from one forward with
    ``output_attentions=True``.

    None when the model returns no attention patterns: only the ``eager`` attention
    implementation materialises them (``sdpa``/flash attention return an empty tuple),
    models without attention (Mamba) have no ``attentions`` at all, and some recurrent
    ones (RWKV) return per-token states (B, T, d) under that name, not (B, H, T, T)
    patterns. With grouped-query attention the patterns are per query head, so every
    head counts.
    """
    device = next(model.parameters()).device
    out = model(input_ids=tokens.to(device), output_attentions=True, use_cache=False)
    attentions = getattr(out, "attentions", None)
    T = tokens.shape[1]
    if not attentions or not all(
        isinstance(a, Tensor) and a.dim() == 4 and a.shape[-2:] == (T, T) for a in attentions
    ):
        return None
    return [prefix_matching_from_pattern(a) for a in attentions]  # each a: (B, H, T, T)


@torch.no_grad()
def tl_prefix_matching_scores(model: nn.Module, tokens: Tensor) -> list[list[float]]:
    """Per layer, per head: prefix-matching scores of a TransformerLens ``HookedTransformer``
    on ``tokens`` from ``repeated_random_tokens``, read from the cached
    ``blocks.{l}.attn.hook_pattern`` (B, H, T, T) of one ``run_with_cache``."""
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(
        tokens.to(device),
        names_filter=lambda name: name.endswith("attn.hook_pattern"),
        return_type=None,
    )
    return [
        prefix_matching_from_pattern(cache[f"blocks.{layer}.attn.hook_pattern"])
        for layer in range(model.cfg.n_layers)
    ]


def next_token_targets(tokens: Tensor) -> Tensor:
    """(B, T) targets of next-token prediction: ``tokens`` shifted left, ``-1`` last."""
    return torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -1)], 1)


@torch.no_grad()
def icl_score(
    model: nn.Module,
    tokens: Tensor,
    targets: Tensor,
    *,
    fraction: float = 0.25,
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
    batch_size: int = 32,
) -> float:
    """Mean loss over the last ``fraction`` of positions minus over the first ``fraction``.

    Negative when later tokens are predicted better from the context (in-context
    learning); positions without a target (``-1``) are left out. ``forward(model, tokens)``
    gives the (B, T, V) logits (default ``model(tokens)``); sequences go through it
    ``batch_size`` at a time so large vocabularies stay within memory.
    """
    device = next(model.parameters()).device
    T = tokens.shape[1]
    width = max(1, int(round(fraction * T)))
    sums = torch.zeros(2, dtype=torch.float64)  # early, late
    counts = torch.zeros(2, dtype=torch.float64)
    for start in range(0, tokens.shape[0], batch_size):
        tok = tokens[start : start + batch_size].to(device)
        tgt = targets[start : start + batch_size].to(device)
        logits = (model(tok) if forward is None else forward(model, tok)).float()  # (B, T, V)
        loss = F.cross_entropy(logits.transpose(1, 2), tgt.clamp(min=0), reduction="none")
        valid = (tgt >= 0).double()
        loss = loss.double() * valid
        for i, sl in enumerate((slice(0, width), slice(T - width, T))):
            sums[i] += float(loss[:, sl].sum())
            counts[i] += float(valid[:, sl].sum())
    early, late = (sums / counts.clamp(min=1)).tolist()
    return late - early


# --- toy model of superposition -------------------------------------------------------


@torch.no_grad()
def tms_measures(W: Tensor, *, threshold: float = 0.5) -> dict[str, float]:
    """Features represented and their polygon, from ``W`` (m, n) of x_hat = ReLU(W^T W x + b).

    ``features_represented``: columns with norm above ``threshold`` (a feature that is
    kept has norm ~1, a dropped one ~0). For m = 2, ``kgon_irregularity`` is the spread
    of the angular gaps between represented features over their mean (0 for a regular
    k-gon) and ``kgon_k`` the k; both are left out for m != 2.
    """
    norms = W.detach().double().norm(dim=0)
    keep = norms > threshold
    out = {"features_represented": float(keep.sum())}
    if W.shape[0] == 2:
        k = int(keep.sum())
        out["kgon_k"] = float(k)
        if k >= 2:
            cols = W.detach().double()[:, keep]
            angles = torch.atan2(cols[1], cols[0]).sort().values
            gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
            out["kgon_irregularity"] = float(gaps.std(unbiased=False) / gaps.mean())
        else:
            out["kgon_irregularity"] = 0.0
    return out


__all__ = [
    "fourier_norms",
    "gini",
    "hf_prefix_matching_scores",
    "icl_score",
    "key_frequencies",
    "modular_addition_measures",
    "next_token_targets",
    "per_head_measures",
    "prefix_matching_from_pattern",
    "prefix_matching_scores",
    "repeated_random_tokens",
    "restricted_excluded_loss",
    "tl_prefix_matching_scores",
    "tms_measures",
]
