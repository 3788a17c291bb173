"""Token ids back to text: a tokenizer.json parsed without code, bytes, ids otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from phaseboard.analysis.tasks import get_task
from phaseboard.analysis.tokenizer import (
    TokenizerError,
    bytes_decoder,
    describe_token_rows,
    parse_tokenizer,
    token_contexts,
)
from tests.tiny_tokenizer import VOCAB, corpus, encode, tokenizer_json

GPT2 = {"model_type": "gpt2", "vocab_size": 256, "n_positions": 32, "n_embd": 8,
        "n_layer": 1, "n_head": 2}  # fmt: skip


def test_a_trained_tokenizer_json_decodes_windows_back_to_the_source_text() -> None:
    parsed = parse_tokenizer(tokenizer_json())
    ids = encode(corpus())
    assert parsed.vocab_size == VOCAB
    rows = [ids[i : i + 24] for i in range(0, 24 * 5, 24)]
    texts = describe_token_rows(rows, parsed.decode)
    assert "".join(texts) == parsed.decode(ids[: 24 * 5]) and texts[0] in corpus()
    assert describe_token_rows(rows, None)[0] == " ".join(map(str, rows[0]))


def test_long_decoded_texts_are_cut() -> None:
    long = list(b"x" * 50)
    assert describe_token_rows([long], bytes_decoder, max_chars=10) == ["x" * 10 + " …"]


def test_bytes_decode_utf8_and_name_ids_past_a_byte() -> None:
    assert bytes_decoder(list("héllo → ok".encode())) == "héllo → ok"
    assert bytes_decoder([104, 105, 300, 33]) == "hi⟨300⟩!"
    assert bytes_decoder([0xE2, 0x86]) == "\ufffd"  # a cut multi-byte character


def test_per_token_texts_show_context_and_the_predicted_token_visibly() -> None:
    row = list(b"ab\ncd")
    decoded = token_contexts([row], 4, bytes_decoder, context=2)[0]
    assert decoded == ["a → “b”", "ab → “↵”", "… b↵ → “c”", "… ↵c → “d”"]
    assert token_contexts([row], 2, None, context=2)[0] == ["97 → 98", "97 98 → 10"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a Hugging Face tokenizer.json"),
        (json.dumps({"model": {"type": "BPE", "vocab": "x"}}), "cannot read it"),
    ],
)
def test_what_is_not_a_tokenizer_json_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        parse_tokenizer(text)


def test_token_tasks_decode_bytes_from_their_config_or_a_decoder_they_are_given() -> None:
    ids = torch.tensor([list(b"def f(x):\n    return x")])
    plain = get_task("hf_causal_lm", {"hf_config": GPT2})
    assert plain.describe_examples((ids,)) == [" ".join(str(i) for i in ids[0].tolist())]
    as_bytes = get_task("hf_causal_lm", {"hf_config": GPT2, "tokenizer": "bytes"})
    assert as_bytes.describe_examples((ids,)) == ["def f(x):\n    return x"]
    as_bytes.set_decoder(lambda row: "stored")  # the config's choice wins
    assert as_bytes.describe_examples((ids,)) == ["def f(x):\n    return x"]
    plain.set_decoder(lambda row: f"{len(row)} tokens")
    assert plain.describe_examples((ids,)) == [f"{ids.shape[1]} tokens"]
    with pytest.raises(ValueError, match="tokenizer must be null"):
        get_task("hf_causal_lm", {"hf_config": GPT2, "tokenizer": "gpt2"})
