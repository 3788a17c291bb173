"""Free-form JSON (configs, tags, summaries) that both stores keep and every reader can send.

Python's JSON parser reads values that cannot round-trip: ``NaN``, ``Infinity`` and ``1e400``
(an infinity), lone UTF-16 surrogates (``"\\udc00"``, which no UTF-8 response can encode),
NUL characters and integers of any size. PostgreSQL refuses the first three; SQLite stores
them and a later read of the row fails. ``json_problem`` finds such a value before it is
stored (the API answers 422 naming where); ``loads_stored`` reads a row stored before that
check existed without failing (lone surrogates become U+FFFD, non-finite numbers null).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "json_problem", "loads_stored"]

MAX_JSON_DEPTH = 32
"""Deepest nesting of a free-form JSON field (config, task_config, analysis_config)."""
MAX_INT64 = 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_problem(value: object) -> str | None:
    """Why ``value`` (parsed JSON) cannot be stored on both backends, or None.

    Iterative, so depth is bounded by ``MAX_JSON_DEPTH``, not by the stack. Integers are
    kept to 64 bits so SQL and every client read the same number.
    """
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        at = f" at {where[:120]}" if where else ""
        if isinstance(node, str):
            if "\x00" in node:
                return f"a NUL character (U+0000){at}"
            if _SURROGATE.search(node):
                return f"a lone UTF-16 surrogate (not valid Unicode){at}"
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not -MAX_INT64 - 1 <= node <= MAX_INT64:
                return f"an integer outside the 64-bit range{at}"
        elif isinstance(node, float):
            if not math.isfinite(node):
                return f"a number that is not finite (NaN, Infinity or beyond 1.8e308){at}"
        elif isinstance(node, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"JSON nested deeper than {MAX_JSON_DEPTH} levels{at}"
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str) and (problem := json_problem(key)):
                    return f"a key with {problem}{at}"
                path = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip(".")
                stack.append((child, path, depth + 1))
        else:
            return f"a {type(node).__name__}, which is not JSON{at}"
    return None


def _repaired(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_repaired(k): _repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    return value


def loads_stored(text: str | bytes) -> Any:
    """``json.loads`` for a stored JSON column: a value the write check would refuse (kept
    by an older version) is repaired instead of failing every later read of the row."""
    value = json.loads(text)
    raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if "\\ud" in raw or "\\uD" in raw or "NaN" in raw or "Infinity" in raw:
        return _repaired(value)  # a rare path: only rows with such text are walked
    return value
