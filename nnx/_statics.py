"""Hashable, comparable wrappers for static values kept in GraphDefs and pytree aux data."""

from __future__ import annotations

from typing import Any

import numpy as np


def _structural_key(value: Any) -> Any:
    """A hashable stand-in for ``value`` that compares equal when the values are equal."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_structural_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(k), _structural_key(v)) for k, v in value.items()))))
    if isinstance(value, set | frozenset):
        return ("set", frozenset(_structural_key(v) for v in value))
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, str(value.dtype), value.tobytes())
    try:
        hash(value)
        return value
    except TypeError:
        return ("id", type(value).__name__, id(value))


class Static:
    """Wraps a static value so it can sit in a hashable GraphDef; compares by value."""

    __slots__ = ("value", "_key", "_hash")

    def __init__(self, value: Any):
        self.value = value
        try:
            self._hash = hash(value)
            self._key = None
        except TypeError:
            self._key = _structural_key(value)
            self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Static) or self._hash != other._hash:
            return False
        if self._key is not None or other._key is not None:
            return self._key == other._key
        a, b = self.value, other.value
        if a is b:
            return True
        if type(a) is not type(b):
            return False
        try:
            return bool(a == b)
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"Static({self.value!r})"
