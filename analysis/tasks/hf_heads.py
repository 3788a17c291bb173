"""Weight groups of Hugging Face causal LMs: per block and per attention head.

Three attention layouts cover the families this field uses:

- GPT-2 (``c_attn``/``c_proj`` are ``Conv1D``: ``y = x @ W + b``): ``c_attn.weight`` is
  (d, 3 * H * dh), Q | K | V thirds along dim 1, head h owns columns h*dh:(h+1)*dh of each
  third (and the same entries of ``c_attn.bias``); ``c_proj.weight`` is (H * dh, d), head h
  owns rows h*dh:(h+1)*dh.
- GPT-NeoX / Pythia (``query_key_value``/``dense`` are ``nn.Linear``): the fused output is
  viewed as (H, 3 * dh) and then chunked into q, k, v, so head h owns the contiguous rows
  h*3*dh:(h+1)*3*dh of ``query_key_value.weight`` (and bias); ``dense.weight`` is
  (d, H * dh), head h owns columns h*dh:(h+1)*dh.
- Llama / Qwen / Mistral (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``): head h owns rows
  h*dh:(h+1)*dh of ``q_proj`` and columns h*dh:(h+1)*dh of ``o_proj``; with grouped-query
  attention (KV heads < heads) it also owns the rows of its KV head g = h // (H / KV) in
  ``k_proj``/``v_proj``, which it shares with the other heads of its group.
Output biases and per-head-dim norms (Qwen3's ``q_norm``) are shared by every head and
belong to no head.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from .base import ParamMask

__all__ = ["attention_layout", "hf_head_masks", "hf_weight_groups"]

_LAYER_INDEX = re.compile(r"^(.*?\.(\d+))\.")


def _rows(p: Tensor, spans: list[tuple[int, int]], dim: int = 0) -> Tensor:
    """Bool mask of ``p``'s shape, True on the given [start, stop) spans along ``dim``."""
    mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
    for start, stop in spans:
        index: list[slice] = [slice(None)] * p.dim()
        index[dim] = slice(start, stop)
        mask[tuple(index)] = True
    return mask


def attention_layout(module: nn.Module) -> str | None:
    """``gpt2``, ``neox``, ``llama`` or None for a module that is no attention layer we know."""
    children = dict(module.named_children())
    if {"c_attn", "c_proj"} <= children.keys() and hasattr(module, "head_dim"):
        return "gpt2"
    if {"query_key_value", "dense"} <= children.keys() and hasattr(module, "head_size"):
        return "neox"
    if {"q_proj", "k_proj", "v_proj", "o_proj"} <= children.keys() and hasattr(module, "head_dim"):
        return "llama"
    return None


def _masks_of(prefix: str, module: nn.Module, layout: str) -> list[ParamMask]:
    """One ParamMask per head of one attention module (names prefixed with ``prefix``)."""
    heads: list[ParamMask] = []
    p = dict(module.named_parameters())
    if layout == "gpt2":
        dh = int(module.head_dim)
        width = p["c_attn.weight"].shape[1] // 3
        H = width // dh
        for h in range(H):
            spans = [(j * width + h * dh, j * width + (h + 1) * dh) for j in range(3)]
            m: ParamMask = {f"{prefix}c_attn.weight": _rows(p["c_attn.weight"], spans, dim=1)}
            if "c_attn.bias" in p:
                m[f"{prefix}c_attn.bias"] = _rows(p["c_attn.bias"], spans)
            m[f"{prefix}c_proj.weight"] = _rows(p["c_proj.weight"], [(h * dh, (h + 1) * dh)])
            heads.append(m)
    elif layout == "neox":
        dh = int(module.head_size)
        H = p["query_key_value.weight"].shape[0] // (3 * dh)
        for h in range(H):
            span = [(h * 3 * dh, (h + 1) * 3 * dh)]
            m = {f"{prefix}query_key_value.weight": _rows(p["query_key_value.weight"], span)}
            if "query_key_value.bias" in p:
                m[f"{prefix}query_key_value.bias"] = _rows(p["query_key_value.bias"], span)
            m[f"{prefix}dense.weight"] = _rows(p["dense.weight"], [(h * dh, (h + 1) * dh)], 1)
            heads.append(m)
    else:  # llama-style separate projections, possibly grouped-query
        dh = int(module.head_dim)
        H = p["q_proj.weight"].shape[0] // dh
        KV = p["k_proj.weight"].shape[0] // dh
        per_group = H // KV
        for h in range(H):
            q_span, kv_span = (
                [(h * dh, (h + 1) * dh)],
                [((h // per_group) * dh, (h // per_group + 1) * dh)],
            )
            m = {}
            for proj, span in (("q_proj", q_span), ("k_proj", kv_span), ("v_proj", kv_span)):
                for kind in ("weight", "bias"):
                    if f"{proj}.{kind}" in p:
                        m[f"{prefix}{proj}.{kind}"] = _rows(p[f"{proj}.{kind}"], span)
            m[f"{prefix}o_proj.weight"] = _rows(p["o_proj.weight"], q_span, dim=1)
            heads.append(m)
    return heads


def hf_head_masks(model: nn.Module) -> dict[str, ParamMask]:
    """``{"l{layer}.h{head}": ParamMask}`` for every attention head of a known layout."""
    out: dict[str, ParamMask] = {}
    for name, module in model.named_modules():
        layout = attention_layout(module)
        if layout is None:
            continue
        found = _LAYER_INDEX.match(name + ".")
        layer = found.group(2) if found else name
        for h, mask in enumerate(_masks_of(name + ".", module, layout)):
            out[f"l{layer}.h{h}"] = mask
    return out


def hf_weight_groups(model: nn.Module) -> dict[str, ParamMask]:
    """Input embedding, each block (``l{i}``: every parameter under ``...{i}.``), the
    output embedding when it is not tied, then every head (``l{i}.h{h}``)."""
    groups: dict[str, ParamMask] = {}
    names = [n for n, _ in model.named_parameters()]  # tied copies appear once
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    by_id = {id(p): n for n, p in model.named_parameters()}
    emb_in = get_in() if callable(get_in) else None
    if emb_in is not None and id(emb_in.weight) in by_id:
        groups["embed"] = {by_id[id(emb_in.weight)]: None}
    for n in names:
        found = _LAYER_INDEX.match(n)
        if found:
            groups.setdefault(f"l{found.group(2)}", {})[n] = None
    emb_out = get_out() if callable(get_out) else None
    if emb_out is not None and emb_in is not None and emb_out.weight is not emb_in.weight:
        groups["unembed"] = {by_id[id(emb_out.weight)]: None}
    groups.update(hf_head_masks(model))
    return groups
