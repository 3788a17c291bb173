"""A tiny byte-level BPE tokenizer trained here on Python's own source text (nothing is
downloaded), that text, and Trainer-style checkpoint folders of a tiny GPT-2, for the tests
of decoded token texts."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

VOCAB = 300


@cache
def corpus() -> str:
    """The source of the standard library's ``json.decoder`` (ASCII Python)."""
    text = (Path(json.__file__).parent / "decoder.py").read_text()
    assert text.isascii()
    return text


@cache
def tokenizer_json(vocab: int = VOCAB) -> str:
    """A ``tokenizer.json`` (byte-level BPE, ``vocab`` entries) trained on ``corpus()``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([corpus()], trainer)
    return tok.to_str()


def encode(text: str) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_str(tokenizer_json()).encode(text).ids)


def gpt2_trainer_folder(root: Path, vocab: int, tokenizer: str | None, ctx: int = 32) -> Path:
    """``checkpoint-10/`` and ``checkpoint-20/`` of a tiny GPT-2 as ``save_pretrained``
    writes them, ``tokenizer`` (text) as the newest one's tokenizer.json."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=vocab, n_positions=ctx,
                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    for seed, step in enumerate((10, 20)):
        torch.manual_seed(seed)
        GPT2LMHeadModel(cfg).save_pretrained(root / f"checkpoint-{step}")
    if tokenizer is not None:
        (root / "checkpoint-20" / "tokenizer.json").write_text(tokenizer)
    return root
