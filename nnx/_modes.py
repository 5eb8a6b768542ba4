"""Graph mode and graph updates: how the graph functions and transforms treat graph nodes.

- graph mode (``graph=True``, the default): graph nodes are walked as an object graph; a node
  or Variable reachable twice is shared again on the other side.
- tree mode (``graph=False``): graph nodes are plain pytrees; a Variable reachable twice is an
  error, since a pytree cannot express sharing.
- graph updates (``graph_updates=True``, the default): what a transformed function does to its
  arguments' structure (attributes set, Variables replaced, nodes added) is carried back out.
  With ``graph_updates=False`` only new Variable values are.

Each transform and graph function takes ``graph=`` and ``graph_updates=``; None means the current
setting, which ``nnx.set_graph_mode(False)`` / ``nnx.set_graph_updates(False)`` change: called
plainly they set it from then on, used with ``with`` they set it for the block, and used as a
decorator for the calls of the function.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Mode(NamedTuple):
    """How a transform or graph function treats graph nodes (see the module docstring)."""

    graph: bool = True
    updates: bool = True

    @property
    def full(self) -> bool:
        """Graph mode with graph updates: shared references and structure changes carried."""
        return self.graph and self.updates


DEFAULT = Mode()


class _Settings(threading.local):
    def __init__(self):
        self.graph: list[bool] = []
        self.updates: list[bool] = []


_settings = _Settings()


class _Setting:
    """A setting that is changed when constructed, and restored by ``with`` or a decorator."""

    _field = ""
    _default = True

    def __init__(self, value: bool, /):
        if not isinstance(value, bool):
            raise TypeError(f"{type(self).__name__} expects True or False, got {value!r}")
        stack = self._stack()
        self.previous = stack[-1] if stack else None
        if stack:
            stack[-1] = value
        else:
            stack.append(value)
        self.value = value

    @classmethod
    def _stack(cls) -> list[bool]:
        return getattr(_settings, cls._field)

    @classmethod
    def current_value(cls) -> bool:
        """The setting now in force."""
        stack = cls._stack()
        return stack[-1] if stack else cls._default

    def __enter__(self) -> _Setting:
        if self.previous is not None:
            self._stack().insert(-1, self.previous)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack().pop()

    def __call__(self, f: F) -> F:
        # As a decorator, the setting holds only while ``f`` runs: undo the construction.
        stack = self._stack()
        stack.pop()
        if self.previous is not None:
            stack.append(self.previous)

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._stack().append(self.value)
            try:
                return f(*args, **kwargs)
            finally:
                self._stack().pop()

        return wrapper  # type: ignore[return-value]


class set_graph_mode(_Setting):  # noqa: N801 - the Flax name
    """Use graph mode (True) or tree mode (False) where ``graph=`` is not given."""

    _field = "graph"


class set_graph_updates(_Setting):  # noqa: N801 - the Flax name
    """Carry structure changes out of transforms (True) or only new values (False) where
    ``graph_updates=`` is not given."""

    _field = "updates"


def resolve(graph: bool | None, graph_updates: bool | None) -> Mode:
    """The mode for explicit ``graph=`` / ``graph_updates=`` arguments (None: the setting)."""
    if graph is None:
        graph = set_graph_mode.current_value()
    if graph_updates is None:
        graph_updates = set_graph_updates.current_value()
    return Mode(bool(graph), bool(graph_updates) and bool(graph))
