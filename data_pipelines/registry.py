"""Name lookups with one error for every registry of the project: ``unknown X 'name'; choose one of: a, b, c``.

Standard library only, so that the two bottom layers (this data package and the pure-torch models) can both
use it without knowing each other; it is the one module of ``data_pipelines`` that the models import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

Value = TypeVar("Value")


class UnknownNameError(KeyError, ValueError):
    """A name that is not in its registry; the message lists the valid names.

    Both a ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad setting), so callers may catch either.
    """

    def __init__(self, what: str, name: object, known: Iterable[str]) -> None:
        self.what, self.name, self.known = what, name, sorted(known)
        super().__init__(f"unknown {what} {name!r}; choose one of: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def lookup(registry: Mapping[str, Value], name: str, what: str) -> Value:
    """``registry[name]``, or an :class:`UnknownNameError` that lists the names ``registry`` holds."""
    if name not in registry:
        raise UnknownNameError(what, name, registry)
    return registry[name]


def check_name(name: str, known: Iterable[str], what: str) -> None:
    """Raise :class:`UnknownNameError` unless ``name`` is one of ``known``."""
    known = list(known)
    if name not in known:
        raise UnknownNameError(what, name, known)
