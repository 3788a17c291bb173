"""``hf_causal_lm``: any ``transformers`` causal LM, rebuilt from its ``config.json``.

``config["hf_config"]`` is the dict of a Hugging Face ``config.json`` (``phaseboard ingest``
reads it from ``checkpoint-N/config.json``). The model is built with random weights from
that config alone (no hub download, no remote code) and the checkpoint loaded into it.
Attention runs in the ``eager`` implementation: the fused SDPA kernels have no vmap
batching rule on every device, and the sampler vmaps the loss over chains. Dropout is off
(the model is in eval mode). Loss: next-token cross-entropy on the run's token data (see
``analysis.tasks._generic``). Weight groups: embeddings, each block, and every attention
head of GPT-2, GPT-NeoX/Pythia and Llama/Qwen/Mistral layouts (``analysis.tasks.hf_heads``).
Progress measures: the ICL score and every head's prefix-matching score
(``prefix_matching/l{i}.h{h}`` and their max), see ``TokenDataTask.progress_measures``.

Needs the optional dependency ``transformers`` (``pip install 'phaseboard[hf]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ._generic import TOKEN_DATA_DEFAULTS, TokenDataTask
from .base import ParamMask
from .hf_heads import hf_weight_groups

# config.json keys that describe the file, not the architecture.
_NOT_ARCHITECTURE = ("model_type", "transformers_version", "_name_or_path", "auto_map")


def hf_config_from_dict(data: Mapping[str, Any]) -> Any:
    """A ``transformers.PretrainedConfig`` from a ``config.json`` dict (no download)."""
    try:
        import transformers
    except ImportError as exc:
        raise ValueError(
            "task hf_causal_lm needs transformers on this worker: pip install 'phaseboard[hf]'"
        ) from exc

    if not isinstance(data, Mapping) or not data.get("model_type"):
        raise ValueError(
            "hf_config must be the dict of a Hugging Face config.json, with a 'model_type'"
        )
    if data.get("auto_map"):
        raise ValueError("hf_config uses custom code (auto_map); Phaseboard never runs it")
    kwargs = {k: v for k, v in data.items() if k not in _NOT_ARCHITECTURE}
    try:
        return transformers.AutoConfig.for_model(str(data["model_type"]), **kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"hf_config: {exc}") from exc


class HFCausalLM(TokenDataTask):
    name = "hf_causal_lm"
    default_config: dict[str, Any] = {"hf_config": {}, **TOKEN_DATA_DEFAULTS}

    def validate_config(self, config: dict[str, Any]) -> None:
        super().validate_config(config)
        self._hf_config = hf_config_from_dict(config["hf_config"])

    def build_model(self, config: Mapping[str, Any] | None = None) -> nn.Module:
        import transformers

        hf = self._hf_config if not config else hf_config_from_dict(config["hf_config"])
        model = transformers.AutoModelForCausalLM.from_config(hf, attn_implementation="eager")
        return model.float().eval()

    def context_length(self) -> int | None:
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self._hf_config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def vocab_size(self) -> int | None:
        return getattr(self._hf_config, "vocab_size", None)

    def logits(self, model: nn.Module, tokens: Tensor) -> Tensor:
        return model(input_ids=tokens, use_cache=False).logits

    def prefix_matching_heads(self, model: nn.Module) -> list[list[float]] | None:
        """Every head's prefix-matching score from one ``output_attentions=True`` forward
        (the model is built with eager attention, which returns the patterns). None, so
        only the ICL score is stored, for a model that returns no (B, H, T, T) patterns
        (Mamba has no attention; RWKV returns states under that name; see
        ``hf_prefix_matching_scores``) or whose sequences are too short to repeat."""
        from ..progress import hf_prefix_matching_scores

        tokens = self.prefix_probe_tokens()
        return None if tokens is None else hf_prefix_matching_scores(model, tokens)

    def weight_groups(self, model: nn.Module) -> dict[str, ParamMask]:
        return hf_weight_groups(model)

    def checkpoint_name_map(self, model: nn.Module) -> Callable[[str], str] | None:
        renames = _hf_renamings(model)
        if not renames:
            return None
        from transformers.core_model_loading import apply_renamings

        own = set(model.state_dict())
        return lambda name: name if name in own else apply_renamings(name, renames)

    def load_state_dict(self, model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
        """Apply transformers' own key renamings first: ``save_pretrained`` writes some
        legacy names (GPT-NeoX's ``embed_out`` for ``lm_head``) that ``from_pretrained`` maps
        back; we load the same files without going through ``from_pretrained``."""
        return super().load_state_dict(model, rename_hf_keys(model, state_dict))


def rename_hf_keys(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` with the model class's registered checkpoint renamings applied
    (transformers >= 5; older versions have none and save the model's own names)."""
    renames = _hf_renamings(model)
    if not renames:
        return dict(state_dict)
    from transformers.core_model_loading import apply_renamings

    own = dict(model.state_dict())
    return {(k if k in own else apply_renamings(k, renames)): v for k, v in state_dict.items()}


def _hf_renamings(model: nn.Module) -> list[Any]:
    """The model class's registered checkpoint renamings (none before transformers 5)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return []
    return [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
