"""Shared base of the generic tasks (``hf_causal_lm``, ``transformer_lens``, ``torch_module``).

These tasks analyse a user's own model, so their data is not generated from a seed: it is
the run's uploaded token data, handed over by the caller with ``set_token_data`` (the
worker resolves the run's datasets; a notebook passes tensors). ``train`` is the training
set, ``test`` the held-out one (if absent, the last ``num_test_sequences`` windows of
``train`` are held out), and every other name becomes a data subset, i.e. a
data-restricted LLC. The loss is next-token cross-entropy on (B, T) token ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokenizer import BYTES, Decoder, bytes_decoder, describe_token_rows
from ..tokens import TokenDataError, token_windows
from .base import Batch, Task, TensorDataset, TrainPoint

# Config keys every token-data task has (merged into each task's default_config).
TOKEN_DATA_DEFAULTS: dict[str, Any] = {
    "seq_len": None,  # None: the data's row length (2-D) or min(128, model context)
    "num_sequences": 512,  # training sequences used (LLC data, metrics' full batch)
    "num_test_sequences": 128,
    "seed": 0,
    # How the views show token ids as text: None (the run's stored tokenizer.json, if
    # any, else ids) or "bytes" (a byte-level vocabulary: token id i is byte i).
    "tokenizer": None,
}


class TokenDataTask(Task):
    """A task whose datasets are token tensors given at run time, not generated."""

    uses_token_data = True

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self._token_data: dict[str, Tensor] = {}
        self._decoder: Decoder | None = None

    def validate_config(self, config: dict[str, Any]) -> None:
        for key in ("num_sequences", "num_test_sequences"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {config[key]!r}")
        if config["seq_len"] is not None and (
            not isinstance(config["seq_len"], int) or config["seq_len"] < 2
        ):
            raise ValueError(f"seq_len must be an integer >= 2 or null, got {config['seq_len']!r}")
        if config["tokenizer"] not in (None, BYTES):
            raise ValueError(
                f"tokenizer must be null (the run's tokenizer.json, if any) or {BYTES!r} (token "
                f"id i is byte i), got {config['tokenizer']!r}"
            )

    # --- data ----------------------------------------------------------------------

    def set_token_data(self, data: Mapping[str, Tensor]) -> None:
        """Use these token tensors (name -> 1-D stream or (N, T)); needs a ``train``."""
        if "train" not in data:
            have = ", ".join(sorted(data)) or "none"
            raise TokenDataError(
                f"task {self.name!r} needs a token dataset named 'train' (upload it with "
                f"POST /api/runs/{{id}}/datasets or `phaseboard ingest --data train=FILE`); "
                f"this run has: {have}"
            )
        self._token_data = {k: torch.as_tensor(v).long() for k, v in data.items()}
        self._datasets = None

    def context_length(self) -> int | None:
        """The model's largest sequence length, if it has one (override per task)."""
        return None

    def sequence_length(self) -> int:
        seq_len = self.config["seq_len"]
        context = self.context_length()
        if seq_len is None:
            train = self._token_data.get("train")
            seq_len = int(train.shape[1]) if train is not None and train.dim() == 2 else 128
            if context is not None:
                seq_len = min(seq_len, context)
        if context is not None and seq_len > context:
            raise TokenDataError(f"seq_len {seq_len} exceeds the model's context of {context}")
        return seq_len

    def _make_datasets(self) -> dict[str, TensorDataset]:
        if not self._token_data:
            self.set_token_data({})  # raises the "needs a train dataset" message
        c, seq_len = self.config, self.sequence_length()
        vocab = self.vocab_size()
        for name, t in self._token_data.items():
            if vocab is not None and int(t.max()) >= vocab:
                raise TokenDataError(
                    f"dataset {name!r} holds token id {int(t.max())} but the model's "
                    f"vocabulary has {vocab} entries"
                )
        train = token_windows(self._token_data["train"], seq_len)
        if "test" in self._token_data:
            test = token_windows(self._token_data["test"], seq_len, c["num_test_sequences"])
        else:
            n_test = min(c["num_test_sequences"], len(train) // 5)
            if n_test < 1:
                raise TokenDataError(
                    f"'train' gives only {len(train)} sequences of {seq_len} tokens: too few "
                    "to hold some out; upload a 'test' dataset or lower seq_len"
                )
            train, test = train[:-n_test], train[-n_test:]
        out = {"train": TensorDataset(train[: c["num_sequences"]]), "test": TensorDataset(test)}
        for name, t in self._token_data.items():
            if name not in ("train", "test"):
                out[name] = TensorDataset(token_windows(t, seq_len, c["num_sequences"]))
        return out

    def vocab_size(self) -> int | None:
        """The model's vocabulary size, to refuse out-of-range token ids (override)."""
        return None

    def chance_loss(self) -> float | None:
        """The loss of a model that ignores context: the unigram entropy of the training
        windows' next-token targets (in nats; the best such a model can do on them, so
        tighter than ln(vocab)). Before any token data is set: ln(vocab) where the vocabulary
        is known, else None. A ``ChanceLoss``, whose ``source`` the LLC verdict names."""
        from ..verdict import ChanceLoss

        if not self._token_data:
            vocab = self.vocab_size()
            return None if not vocab else ChanceLoss(math.log(vocab), f"ln(vocab {vocab})")
        data = self.datasets()
        cached = getattr(self, "_chance", None)
        if cached is None or cached[0] is not data:
            targets = self.full_batch("train")[0][:, 1:].reshape(-1)
            cached = (data, unigram_chance(targets, "training tokens"))
            self._chance = cached
        return cached[1]

    # --- loss ----------------------------------------------------------------------

    def logits(self, model: nn.Module, tokens: Tensor) -> Tensor:
        """(B, T, V) next-token logits of the model on (B, T) ids (override per task)."""
        return model(tokens)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        tokens = batch[0]
        logits = self.logits(model, tokens)  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())

    def outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        """What essential dynamics compares across checkpoints: on token data, the
        log-probability of each next token of the probe windows, (n, T - 1) (the per-token
        losses whose principal components show a language model's stages, Olsson et al.
        2022). The full logits would be (n, T, vocab): a vocabulary's worth of values per
        position, gigabytes per checkpoint for a real LM. Without token data (a
        ``torch_module`` with its own data factory): ``Task.outputs``."""
        if not self.uses_token_data:
            return super().outputs(model, batch)
        tokens = batch[0]
        logits = self.logits(model, tokens)[:, :-1].float()  # (n, T - 1, V)
        return -F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")

    @property
    def has_tokens(self) -> bool:  # type: ignore[override]
        return self.uses_token_data

    def per_token_loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """(n, T - 1) next-token loss at each predicted position (token data only)."""
        if not self.uses_token_data:
            return super().per_token_loss(model, batch)
        tokens = batch[0]
        logits = self.logits(model, tokens)[:, :-1].float()  # (B, T - 1, V)
        return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")

    def set_decoder(self, decode: Decoder | None) -> None:
        """Decode token ids with ``decode`` (the run's stored tokenizer, handed over by the
        caller: a task loads no tokenizer itself, so nothing is downloaded)."""
        self._decoder = decode

    @property
    def decoder(self) -> Decoder | None:
        """How ids become text: bytes where the config says so, else the decoder set with
        ``set_decoder``, else None (ids are shown as numbers)."""
        return bytes_decoder if self.config["tokenizer"] == BYTES else self._decoder

    def describe_examples(self, batch: tuple[Tensor, ...]) -> list[str]:
        """Each window decoded to text where there is a decoder, else its token ids (a
        ``torch_module`` with its own data factory: ``Task.describe_examples``)."""
        if not self.uses_token_data:
            return super().describe_examples(batch)
        return describe_token_rows(batch[0].tolist(), self.decoder)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, batch: tuple[Tensor, ...]) -> float | None:
        """Top-1 next-token accuracy."""
        tokens = batch[0]
        pred = self.logits(model, tokens)[:, :-1].argmax(-1)
        return (pred == tokens[:, 1:]).float().mean().item()

    # --- progress measures ---------------------------------------------------------

    # Probe sizes: the metrics job runs these at every checkpoint, so they stay small.
    icl_probe_sequences = 32
    prefix_probe_sequences = 8
    prefix_probe_max_len = 128

    def progress_measures(self, model: nn.Module) -> dict[str, float]:
        """``icl_score`` (analysis.progress.icl_score) on the first ``icl_probe_sequences``
        windows of the ``test`` split (the uploaded test data, else the windows held out
        of ``train``): mean next-token loss at the last quarter of the ``seq_len``
        positions minus at the first quarter (``round(seq_len / 4)`` positions each, the
        last position having no target), negative when context helps. Left out below
        ``seq_len`` 4. Subclasses add per-head prefix matching (``prefix_matching_heads``)."""
        from ..progress import icl_score, next_token_targets, per_head_measures

        out: dict[str, float] = {}
        tokens = self.full_batch("test")[0][: self.icl_probe_sequences]
        if tokens.shape[1] >= 4:
            targets = next_token_targets(tokens)
            out["icl_score"] = icl_score(model, tokens, targets, forward=self.logits)
        heads = self.prefix_matching_heads(model)
        if heads is not None:
            out.update(per_head_measures(heads, range(len(heads))))
        return out

    def prefix_probe_tokens(self) -> Tensor | None:
        """The repeated random sequences prefix matching is read on: a random half of
        ``min(seq_len, prefix_probe_max_len)`` tokens repeated once, fixed by ``seed``;
        None where the vocabulary is unknown or the sequences are too short to repeat."""
        from ..progress import repeated_random_tokens

        vocab = self.vocab_size()
        length = min(self.sequence_length(), self.prefix_probe_max_len)
        if vocab is None or length < 4:
            return None
        return repeated_random_tokens(
            vocab, length, self.prefix_probe_sequences, self.config["seed"]
        )

    def prefix_matching_heads(self, model: nn.Module) -> list[list[float]] | None:
        """Per layer, per head: prefix-matching scores, or None where the model does not
        expose attention patterns (default; the attention-model tasks override)."""
        return None

    # --- weights -------------------------------------------------------------------

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The model's names and shapes; tied copies may be absent from a checkpoint and the
        names ``checkpoint_name_map`` knows are accepted (as ``load_state_dict`` does)."""
        from ..checkpoints import ExpectedShapes

        shapes = super().expected_shapes()
        try:
            with torch.device("meta"):
                model = self.build_model()
        except Exception:  # noqa: BLE001 - some constructors need real tensors
            model = self.build_model()
        groups: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
        optional = [n for names in groups.values() for n in names[1:]]
        return ExpectedShapes(shapes, optional, self.checkpoint_name_map(model))

    def checkpoint_name_map(self, model: nn.Module) -> Callable[[str], str] | None:
        """Maps a checkpoint's tensor name onto the model's; None: names are the model's."""
        return None

    def load_state_dict(self, model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
        """Strict load, except that tied copies (``lm_head.weight`` = the embedding) may be
        absent, as ``save_pretrained`` writes them once."""
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        filled = dict(state_dict)
        for names in aliases.values():
            present = [n for n in names if n in filled]
            if present:
                for n in names:
                    filled.setdefault(n, filled[present[0]])
        # Non-persistent buffers (rotary tables, causal masks) are rebuilt from the config.
        return super().load_state_dict(model, filled)

    def train(self, **kwargs: Any) -> Iterator[TrainPoint]:
        raise NotImplementedError(
            f"task {self.name!r} analyses uploaded checkpoints; train the model with your own "
            "code and upload its checkpoints"
        )


def unigram_chance(targets: Tensor, what: str) -> float:
    """The entropy (nats) of the empirical distribution of ``targets`` (integer ids): the
    cross-entropy of always predicting their frequencies, as a ``ChanceLoss``."""
    from ..verdict import ChanceLoss

    counts = torch.bincount(targets.reshape(-1).long()).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log()).sum())
    return ChanceLoss(entropy, f"unigram entropy of {int(counts.sum()):,} {what}")


__all__ = ["TOKEN_DATA_DEFAULTS", "TokenDataTask", "unigram_chance"]
