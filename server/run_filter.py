"""The runs-table filter language: a small tokenizer and recursive-descent parser, no eval.

Syntax (case-insensitive keywords)::

    expr     := term (OR term)*
    term     := factor (AND factor)*
    factor   := NOT factor | "(" expr ")" | compare
    compare  := field op value | field            (a bare field: "is present")
    op       := < | <= | > | >= | = | == | != | ~  (~: substring, case-insensitive)
    value    := number | "quoted" | 'quoted' | bareword | true | false | null
    field    := config.<key>[.<key>...] | summary.<series>.(last|min|max|last_step)
              | name | task | status | tag | notes

Examples: ``config.lr < 1e-3``, ``summary.test_loss.min < 0.1 and status = finished``,
``config.optimizer.name = adamw or not tag = sweep``, ``name ~ grok``. Series names may hold
``/`` (``summary.train/loss.min``); a config key with a dot in its name is found too
(``config.a.b`` tries ``config["a"]["b"]`` and then ``config["a.b"]``).

The result is a predicate over a run's plain-dict row, evaluated in Python: the same on
SQLite and PostgreSQL, and no user text ever reaches SQL. Any malformed input is a
``FilterError`` (a ``BadInput``: HTTP 422) naming the position.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phaseboard.server.errors import BadInput

__all__ = ["FilterError", "Row", "field_value", "parse_field", "parse_filter"]

Row = dict[str, Any]
Predicate = Callable[[Row], bool]

MAX_LENGTH = 2000
MAX_DEPTH = 32
MAX_TERMS = 64
STATS = ("last", "min", "max", "last_step")
PLAIN_FIELDS = ("name", "task", "status", "tag", "notes")


class FilterError(BadInput):
    """A filter (or column/sort field) that does not parse."""


@dataclass(frozen=True)
class Token:
    kind: str  # field | op | num | str | word | lparen | rparen | and | or | not | end
    text: str
    pos: int
    value: Any = None


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<op><=|>=|==|!=|<|>|=|~)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w./-]))
  | (?P<word>[^\s()<>=!~"']+)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter: longer than {MAX_LENGTH} characters")
    if "\x00" in text:
        raise FilterError("filter: NUL character")
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterError(f"filter: unexpected {text[pos]!r} at position {pos + 1}")
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "ws":
            pass
        elif kind == "str":
            body = raw[1:-1]
            out.append(Token("str", raw, pos, re.sub(r"\\(.)", r"\1", body)))
        elif kind == "num":
            out.append(Token("num", raw, pos, float(raw)))
        elif kind == "word":
            low = raw.lower()
            if low in ("and", "or", "not"):
                out.append(Token(low, raw, pos))
            else:
                out.append(Token("word", raw, pos, raw))
        else:
            out.append(Token(kind, raw, pos))
        pos = m.end()
    out.append(Token("end", "", len(text)))
    return out


def parse_field(text: str) -> tuple[str, ...]:
    """``config.lr`` -> ("config", "lr"); ``summary.a/b.min`` -> ("summary", "a/b", "min")."""
    text = text.strip()
    head, _, rest = text.partition(".")
    head = head.lower()
    if head in PLAIN_FIELDS and not rest:
        return (head,)
    if head == "config" and rest:
        return ("config", rest)
    if head == "summary" and rest:
        series, _, stat = rest.rpartition(".")
        if series and stat in STATS:
            return ("summary", series, stat)
        raise FilterError(f"{text!r}: use summary.<series>.<{'|'.join(STATS)}>")
    raise FilterError(
        f"{text!r}: unknown field; use config.<key>, summary.<series>.<stat>, "
        f"or one of {', '.join(PLAIN_FIELDS)}"
    )


_MISSING = object()


def _config_get(config: Any, path: str) -> Any:
    """``a.b.c`` in nested dicts, also accepting keys that themselves contain dots."""
    if not isinstance(config, dict):
        return _MISSING
    if path in config:
        return config[path]
    parts = path.split(".")
    for i in range(1, len(parts)):
        key = ".".join(parts[:i])
        if key in config:
            found = _config_get(config[key], ".".join(parts[i:]))
            if found is not _MISSING:
                return found
    return _MISSING


def field_value(row: Row, field: tuple[str, ...]) -> Any:
    """The value of a parsed field in a run row, or None when the run lacks it."""
    if field[0] == "config":
        v = _config_get(row.get("config") or {}, field[1])
        return None if v is _MISSING else v
    if field[0] == "summary":
        s = (row.get("summary") or {}).get(field[1])
        return s.get(field[2]) if isinstance(s, dict) else None
    if field[0] == "tag":
        return list(row.get("tags") or [])
    return row.get(field[0])


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _compare(left: Any, op: str, right: Any) -> bool:
    if isinstance(left, list):  # tags: any element matches
        return any(_compare(x, op, right) for x in left) if op != "!=" else right not in left
    if op == "~":
        return left is not None and str(right).lower() in str(left).lower()
    if op in ("=", "=="):
        if _number(left) is not None and _number(right) is not None:
            return _number(left) == _number(right)
        if isinstance(right, str) and not isinstance(left, str) and left is not None:
            return str(left).lower() == right.lower()  # true/false/numbers written bare
        return left == right
    if op == "!=":
        return not _compare(left, "=", right)
    a, b = _number(left), _number(right)
    if a is None or b is None:
        if isinstance(left, str) and isinstance(right, str):
            a, b = left, right  # type: ignore[assignment]
        else:
            return False  # missing or mixed types never satisfy an order
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]  # type: ignore[operator]


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.terms = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self, kind: str | None = None) -> Token:
        tok = self.tokens[self.i]
        if kind is not None and tok.kind != kind:
            where = "the end" if tok.kind == "end" else f"{tok.text!r} at position {tok.pos + 1}"
            raise FilterError(f"filter: expected {kind} but found {where}")
        self.i += 1
        return tok

    def expr(self) -> Predicate:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter: nested deeper than {MAX_DEPTH}")
        parts = [self.term()]
        while self.peek().kind == "or":
            self.take()
            parts.append(self.term())
        self.depth -= 1
        return parts[0] if len(parts) == 1 else (lambda r, ps=parts: any(p(r) for p in ps))

    def term(self) -> Predicate:
        parts = [self.factor()]
        while self.peek().kind == "and":
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda r, ps=parts: all(p(r) for p in ps))

    def factor(self) -> Predicate:
        tok = self.peek()
        if tok.kind == "not":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FilterError(f"filter: nested deeper than {MAX_DEPTH}")
            inner = self.factor()
            self.depth -= 1
            return lambda r: not inner(r)
        if tok.kind == "lparen":
            self.take()
            inner = self.expr()
            self.take("rparen")
            return inner
        return self.compare()

    def compare(self) -> Predicate:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"filter: more than {MAX_TERMS} comparisons")
        tok = self.take("word")
        try:
            field = parse_field(tok.text)
        except FilterError as exc:
            raise FilterError(f"filter at position {tok.pos + 1}: {exc.message}") from exc
        if self.peek().kind != "op":
            return lambda r: field_value(r, field) not in (None, [])
        op = self.take().text
        vt = self.peek()
        if vt.kind not in ("num", "str", "word"):
            where = "the end" if vt.kind == "end" else f"{vt.text!r} at position {vt.pos + 1}"
            raise FilterError(f"filter: expected a value after {op!r} but found {where}")
        self.take()
        value: Any = vt.value
        if vt.kind == "word":
            value = {"true": True, "false": False, "null": None}.get(vt.text.lower(), vt.text)
        return lambda r: _compare(field_value(r, field), op, value)


def parse_filter(text: str) -> Predicate:
    """Parse ``text`` into a predicate over run rows; an empty filter keeps every run."""
    if not text or not text.strip():
        return lambda r: True
    parser = _Parser(tokenize(text))
    predicate = parser.expr()
    parser.take("end")
    return predicate
