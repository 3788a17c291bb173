"""Which model factories a ``torch_module`` task may call: only what the operator installed.

A task config names its model (and data) factory as a string; that string comes from a
request, so it is never imported as given. It is accepted only if it is

- the name (``my_mlp``) or the target (``my_pkg.models:make_mlp``) of an entry point in the
  group ``phaseboard.models``, which a package registers in its ``pyproject.toml``::

      [project.entry-points."phaseboard.models"]
      my_mlp = "my_pkg.models:make_mlp"

- or a ``package.module:function`` matching one of the ``allowed`` patterns the caller passes
  (shell-style, e.g. ``my_pkg.models:make_*``; the server passes
  ``PHASEBOARD_MODEL_FACTORIES``). A pattern must start with a literal package name that is
  not part of the standard library, and a name matched by a pattern is one identifier
  defined inside that package (``my_pkg.models:os.system`` and a re-exported
  ``from os import system`` are refused).

Anything else raises ``FactoryNotAllowed`` naming what is allowed, before any import.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "MODELS_ENTRY_POINT_GROUP",
    "FactoryNotAllowed",
    "check_factory",
    "check_patterns",
    "installed_factories",
    "load_factory",
]

MODELS_ENTRY_POINT_GROUP = "phaseboard.models"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}$")
_PATTERN_HEAD = re.compile(rf"^({_IDENT})(?=[.:])")
_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?\[\]!]+$")
_NEVER = frozenset(sys.stdlib_module_names) | {"builtins", "__main__", "__builtin__"}


class FactoryNotAllowed(ValueError):
    """A factory that is neither an installed entry point nor matched by an allowed pattern."""

    def __init__(self, key: str, spec: object, allowed: Iterable[str] = ()) -> None:
        self.key, self.spec = key, spec
        self.allowed = describe_allowed(allowed)
        shown = repr(spec)[:120]
        super().__init__(
            f"{key} {shown} is not an installed model factory; allowed: {self.allowed}"
        )


def installed_factories() -> dict[str, str]:
    """Entry points of group ``phaseboard.models``: ``{name: "module:attribute"}``."""
    return {ep.name: ep.value for ep in entry_points(group=MODELS_ENTRY_POINT_GROUP)}


def describe_allowed(allowed: Iterable[str] = ()) -> str:
    """The allowed factories in words, for error messages."""
    eps = sorted(installed_factories())
    patterns = list(allowed)
    parts = [
        f"entry points in group {MODELS_ENTRY_POINT_GROUP!r}: " + (", ".join(eps) or "(none)"),
        "patterns: " + (", ".join(patterns) or "(none)"),
    ]
    return "; ".join(parts)


def check_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Validate allowed patterns; raise ``ValueError`` for one that could match code the
    operator did not mean (a wildcard package, the standard library, no ``:``)."""
    out = []
    for raw in patterns:
        pattern = raw.strip()
        if not pattern:
            continue
        head = _PATTERN_HEAD.match(pattern)
        if ":" not in pattern or not _PATTERN.match(pattern) or head is None:
            raise ValueError(
                f"model factory pattern {pattern!r} must look like 'package.module:function' "
                "and start with a literal package name (wildcards * ? [..] after it)"
            )
        if head.group(1) in _NEVER:
            raise ValueError(
                f"model factory pattern {pattern!r} names the standard library "
                f"({head.group(1)!r}); only installed model packages may be allowed"
            )
        out.append(pattern)
    return tuple(out)


def _entry_point_target(spec: str) -> str | None:
    installed = installed_factories()
    if spec in installed:
        return installed[spec]
    if spec in installed.values():
        return spec
    return None


def check_factory(spec: object, allowed: Iterable[str] = (), *, key: str = "factory") -> None:
    """Raise ``FactoryNotAllowed`` unless ``spec`` is an installed entry point or matches an
    allowed pattern. Imports nothing."""
    patterns = check_patterns(allowed)
    if not isinstance(spec, str) or not spec:
        raise FactoryNotAllowed(key, spec, patterns)
    if _entry_point_target(spec) is not None:
        return
    package = spec.split(".")[0].split(":")[0]
    if _SPEC.match(spec) and package not in _NEVER and any(fnmatchcase(spec, p) for p in patterns):
        return
    raise FactoryNotAllowed(key, spec, patterns)


def load_factory(
    spec: str, allowed: Iterable[str] = (), *, key: str = "factory"
) -> Callable[..., Any]:
    """The callable ``spec`` names, once ``check_factory`` allows it."""
    check_factory(spec, allowed, key=key)
    target = _entry_point_target(spec)
    if target is not None:
        ep = next(
            ep
            for ep in entry_points(group=MODELS_ENTRY_POINT_GROUP)
            if ep.name == spec or ep.value == spec
        )
        try:
            obj = ep.load()
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{key} {spec!r}: cannot load entry point {target!r}: {exc}") from exc
    else:
        module, _, attr = spec.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"{key}: cannot import {module!r} on this worker: {exc}") from exc
        obj = getattr(mod, attr, None)
        if obj is None:
            raise ValueError(f"{key}: module {module!r} has no attribute {attr!r}")
        home = str(getattr(obj, "__module__", "") or "")
        if home.split(".")[0] != module.split(".")[0]:
            raise FactoryNotAllowed(key, spec, allowed)  # imported into the module, not its own
    if not callable(obj):
        raise ValueError(f"{key} {spec!r} is not callable")
    return obj
