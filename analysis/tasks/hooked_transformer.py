"""``transformer_lens``: a TransformerLens ``HookedTransformer`` from its config dict.

``config["tl_config"]`` holds the keyword arguments of ``HookedTransformerConfig`` (what
``model.cfg.to_dict()`` gives, or a hand-written ``{"n_layers": 2, "d_model": 64, ...}``).
The model is built on the CPU with random weights and the checkpoint (``model.state_dict()``
of the user's model) loaded into it. Loss: next-token cross-entropy on the run's token data.
Weight groups: each block (``l{i}``) and every head (``l{i}.h{h}``: slice ``[h]`` of
``W_Q, W_K, W_V, W_O`` and ``b_Q, b_K, b_V``; ``b_O`` is shared and in no head).
Progress measures: the ICL score and every head's prefix-matching score
(``prefix_matching/l{i}.h{h}`` and their max), see ``TokenDataTask.progress_measures``.

Needs ``transformer_lens`` 2.x or 3.x (``pip install 'phaseboard[tl]'``): version 4 removed
``HookedTransformer``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._generic import TOKEN_DATA_DEFAULTS, TokenDataTask
from .base import ParamMask, head_mask, layer_groups

# Config entries that describe where a model came from or where it runs, not its shape.
_IGNORED = (
    "device",
    "n_devices",
    "n_params",
    "checkpoint_index",
    "checkpoint_label_type",
    "checkpoint_value",
    "from_checkpoint",
    "tokenizer_name",
    "original_architecture",
)
_HEAD_PARAMS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


class HookedTransformerTask(TokenDataTask):
    name = "transformer_lens"
    default_config: dict[str, Any] = {"tl_config": {}, **TOKEN_DATA_DEFAULTS}

    def validate_config(self, config: dict[str, Any]) -> None:
        super().validate_config(config)
        try:
            from transformer_lens import HookedTransformerConfig
        except ImportError as exc:
            raise ValueError(
                "task transformer_lens needs transformer_lens<4 on this worker: "
                "pip install 'phaseboard[tl]'"
            ) from exc

        raw = config["tl_config"]
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError("tl_config must be the dict of a HookedTransformerConfig")
        kwargs = {k: v for k, v in raw.items() if k not in _IGNORED}
        kwargs["device"] = "cpu"
        if isinstance(kwargs.get("dtype"), str):  # to_dict() writes "torch.float32"
            kwargs.pop("dtype")
        try:
            self._tl_config = HookedTransformerConfig(**kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ValueError(f"tl_config: {exc}") from exc

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        from transformer_lens import HookedTransformer

        with warnings.catch_warnings():  # 3.x deprecates it in favour of 4.x's bridge
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer(self._tl_config).float().eval()

    def context_length(self) -> int | None:
        return int(self._tl_config.n_ctx)

    def vocab_size(self) -> int | None:
        return int(self._tl_config.d_vocab)

    def logits(self, model: nn.Module, tokens: Tensor) -> Tensor:
        return model(tokens, return_type="logits")

    def prefix_matching_heads(self, model: nn.Module) -> list[list[float]] | None:
        """Every head's prefix-matching score from the ``blocks.{l}.attn.hook_pattern``
        activations of one ``run_with_cache`` (None for sequences too short to repeat;
        attention-only or not, every ``HookedTransformer`` block has that hook)."""
        from ..progress import tl_prefix_matching_scores

        tokens = self.prefix_probe_tokens()
        return None if tokens is None else tl_prefix_matching_scores(model, tokens)

    def weight_groups(self, model: nn.Module) -> dict[str, ParamMask]:
        groups: dict[str, ParamMask] = {}
        params = dict(model.named_parameters())
        for layer_name, names in layer_groups(model).items():
            if layer_name.startswith("blocks."):
                i = layer_name.split(".")[1]
                groups.setdefault(f"l{i}", {}).update(names)
        cfg = self._tl_config
        for i in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                mask: ParamMask = {}
                for w in _HEAD_PARAMS:
                    name = f"blocks.{i}.attn.{w}"
                    if name in params and params[name].shape[0] == cfg.n_heads:
                        mask[name] = head_mask(params[name], h)
                groups[f"l{i}.h{h}"] = mask
        return groups
