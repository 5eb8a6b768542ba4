"""The graph-node protocol: what the graph functions need from a mutable node (Object, List, Dict)."""

from __future__ import annotations

from typing import Any


class GraphNode:
    """Mixin for mutable objects that the graph functions traverse by reference.

    Subclasses implement ``_graph_items`` (sorted ``(key, value)`` children),
    ``_graph_set``/``_graph_del`` (mutation without version bumps, for write-back), and
    ``_graph_create``/``_graph_fill`` (build an instance from children, for merge).
    ``_graph_forced(key)`` is ``"data"`` or ``"static"`` for a child marked so (with
    ``nnx.data`` / ``nnx.static``, or declared by its class), ``"reference"`` for a child that
    graph mode walks and tree mode keeps static (``Optimizer.model``), and None when its kind
    follows its value. ``_plain`` is False for a node made as such; the tracked List/Dict that replaced a
    plain list or dict has ``"data"`` or ``"static"`` there, the kind the original had.
    """

    __slots__ = ()
    _plain: bool | str = False

    def _graph_items(self) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def _graph_forced(self, key: Any) -> str | None:
        return None

    def _graph_get(self, key: Any) -> Any:
        raise NotImplementedError

    def _graph_set(self, key: Any, value: Any) -> None:
        raise NotImplementedError

    def _graph_del(self, key: Any) -> None:
        raise NotImplementedError

    @classmethod
    def _graph_create(cls) -> GraphNode:
        raise NotImplementedError

    def _graph_fill(self, items: list[tuple[Any, Any]]) -> None:
        raise NotImplementedError

    def _graph_mark_seen(self) -> None:
        raise NotImplementedError

    def _graph_trace(self) -> Any:
        raise NotImplementedError

    def _restore_marks(self, marks: tuple) -> None:
        """Take back the ``(key, kind)`` marks of a copy (after a JAX pytree round trip)."""
