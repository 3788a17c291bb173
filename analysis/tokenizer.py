"""Token ids back to text, for the views that list examples and tokens.

A run's tokenizer is only ever used to decode: a Hugging Face ``tokenizer.json`` is parsed
with the ``tokenizers`` library (``Tokenizer.from_str``: a JSON description, no code is
loaded or run), and a byte-level vocabulary needs no file at all (token id i is byte i).
Every function takes the decoder as an argument; without one, ids are shown as numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "BYTES",
    "Decoder",
    "ParsedTokenizer",
    "TokenizerError",
    "bytes_decoder",
    "describe_token_rows",
    "parse_tokenizer",
    "token_contexts",
]

Decoder = Callable[[Sequence[int]], str]  # token ids -> text
BYTES = "bytes"  # the task-config value of a byte-level vocabulary
# A decoded example is cut here: a window of a long-context model decodes to pages of text,
# and results keep every example's text inline.
MAX_EXAMPLE_CHARS = 2000
# Shown in per-token texts for characters that would otherwise be invisible.
_VISIBLE = str.maketrans({"\n": "↵", "\r": "␍", "\t": "⇥"})


class TokenizerError(ValueError):
    """Text that is not a usable ``tokenizer.json``; the message says why."""


@dataclass(frozen=True)
class ParsedTokenizer:
    """A parsed ``tokenizer.json``: its decoder and vocabulary size (added tokens included)."""

    decode: Decoder
    vocab_size: int


def bytes_decoder(ids: Sequence[int]) -> str:
    """Token id i is byte i; ids past 255 (no byte) are shown as ``⟨id⟩``."""
    out: list[str] = []
    run: list[int] = []
    for i in ids:
        if 0 <= i < 256:
            run.append(i)
            continue
        if run:
            out.append(bytes(run).decode("utf-8", "replace"))
            run = []
        out.append(f"⟨{i}⟩")
    if run:
        out.append(bytes(run).decode("utf-8", "replace"))
    return "".join(out)


def parse_tokenizer(text: str) -> ParsedTokenizer:
    """Parse a ``tokenizer.json`` (its text) for decoding; ``TokenizerError`` if it is not one."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise TokenizerError("decoding needs the `tokenizers` library installed") from exc
    try:
        head = json.loads(text)
    except ValueError as exc:
        raise TokenizerError(f"not JSON: {exc}") from None
    if not isinstance(head, dict) or "model" not in head:
        raise TokenizerError(
            "not a Hugging Face tokenizer.json (a JSON object with a 'model' entry, as "
            "`tokenizer.save(...)` or `save_pretrained` writes it)"
        )
    try:
        tok = Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exceptions
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(f"the tokenizers library cannot read it: {first[:300]}") from None
    vocab = int(tok.get_vocab_size(with_added_tokens=True))
    if vocab < 1:
        raise TokenizerError("its vocabulary is empty")

    def decode(ids: Sequence[int]) -> str:
        return tok.decode([int(i) for i in ids], skip_special_tokens=False)

    return ParsedTokenizer(decode, vocab)


def describe_token_rows(
    rows: Sequence[Sequence[int]], decode: Decoder | None, max_chars: int = MAX_EXAMPLE_CHARS
) -> list[str]:
    """A text per row of token ids: decoded where there is a decoder (cut at ``max_chars``
    with " …"), else the ids separated by spaces."""
    if decode is None:
        return [" ".join(str(t) for t in row) for row in rows]
    out = []
    for row in rows:
        text = decode(list(row))
        out.append(text if len(text) <= max_chars else text[:max_chars] + " …")
    return out


def token_contexts(
    rows: Sequence[Sequence[int]], positions: int, decode: Decoder | None, context: int = 4
) -> list[list[str]]:
    """Per row and predicted position t: the last ``context`` tokens up to t and the token
    predicted there (a per-token loss at t predicts token t + 1), as ``… ctx → next``.

    Decoded, the context is one string and the next token is quoted, with line breaks and
    tabs made visible (a single token is often just whitespace); else token ids."""
    out = []
    for row in rows:
        row = list(row)
        texts = []
        for t in range(positions):
            ids = row[max(0, t - context + 1) : t + 1]
            lead = "… " if t >= context else ""
            has_next = t + 1 < len(row)
            if decode is None:
                nxt = f" → {row[t + 1]}" if has_next else ""
                texts.append(lead + " ".join(str(x) for x in ids) + nxt)
                continue
            ctx = decode(ids).translate(_VISIBLE)
            nxt = f" → “{decode([row[t + 1]]).translate(_VISIBLE)}”" if has_next else ""
            texts.append(lead + ctx + nxt)
        out.append(texts)
    return out
