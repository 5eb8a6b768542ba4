"""A bounded cache of transformed pure functions keyed by static structure.

The nnx transforms wrap a pure function of leaf values per argument structure; handing JAX the
same function object for the same structure lets its own caches skip retracing. Keys hold only
structure (GraphDef entries, axes, specs), never user objects or arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_SIZE = 64


class ProgramCache:
    """At most ``maxsize`` entries; the least recently used one is dropped first."""

    __slots__ = ("maxsize", "_items")

    def __init__(self, maxsize: int = DEFAULT_SIZE):
        self.maxsize = maxsize
        self._items: dict[Hashable, Any] = {}

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The entry for ``key``, made with ``make()`` on a miss."""
        item = self._items.pop(key, None)
        if item is None:
            item = make()
            if len(self._items) >= self.maxsize:
                del self._items[next(iter(self._items))]
        self._items[key] = item  # the most recently used last
        return item

    def __len__(self) -> int:
        return len(self._items)
