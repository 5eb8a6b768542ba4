"""Walks over a graph: ``iter_graph``, ``iter_children``, ``recursive_map``, ``map`` and
``find_duplicates``.

In graph mode a walk follows the children of graph nodes and the items of containers,
visiting each graph node and Variable once, so shared objects are seen once and cycles end.
In tree mode (``graph=False``) graph nodes are seen as the pytrees they are (their data
attributes only); a Variable reached twice, a cycle, or a node of a class with
``pytree=False`` raises, naming the paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax

from nnx import filterlib
from nnx._graphdef import Unflattener, pytree_children
from nnx._modes import set_graph_mode
from nnx._node import GraphNode
from nnx._typing import ARRAY_TYPES, Path, key_order, path_str
from nnx.statelib import map_state
from nnx.variablelib import Variable

A = TypeVar("A")


def _graph(graph: bool | None) -> bool:
    return set_graph_mode.current_value() if graph is None else bool(graph)


def is_graph_node(x: Any) -> bool:
    """Whether ``x`` is a graph node (Module, Rngs, List, Dict, other Object)."""
    return isinstance(x, GraphNode)


def is_node(x: Any) -> bool:
    """Whether ``x`` is a graph node or a Variable."""
    return isinstance(x, GraphNode | Variable)


def _container_items(x: Any) -> list[tuple[Any, Any]] | None:
    """The ``(key, child)`` items of a container that is not a graph node; None for a leaf."""
    if isinstance(x, dict):
        return sorted(x.items(), key=lambda kv: key_order(kv[0]))
    if type(x) in (list, tuple):
        return list(enumerate(x))
    items, treedef = pytree_children(x)
    return None if treedef is None else items


def _graph_items(x: Any) -> list[tuple[Any, Any]] | None:
    if isinstance(x, GraphNode):
        return x._graph_items()
    if isinstance(x, (Variable, *ARRAY_TYPES)):
        return None
    return _container_items(x)


def _tree_items(x: Any, where: str, path: Path) -> list[tuple[Any, Any]] | None:
    """Tree-mode children of ``x`` (its pytree children), checking it can be a pytree."""
    if isinstance(x, Variable):
        return None
    if isinstance(x, GraphNode) and not getattr(type(x), "_nnx_pytree", True):
        at = f" Found at path: {path_str(path)}." if path else ""
        raise ValueError(
            f"Cannot use '{where}' with graph=False on a '{type(x).__name__}' instance that has "
            f"pytree=False.{at} Classes declared with pytree=False are not JAX pytrees, so tree "
            f"mode cannot walk them: use graph mode (nnx.{where}(..., graph=True)) or drop "
            "pytree=False."
        )
    items, treedef = pytree_children(x)
    return None if treedef is None else items


class _TreeGuard:
    """Tree-mode bookkeeping: a Variable seen twice or a node inside itself raises."""

    def __init__(self, where: str):
        self.where = where
        self.variables: dict[int, Path] = {}
        self.walking: dict[int, Path] = {}

    def _error(self, what: str, first: Path, second: Path, reason: str) -> ValueError:
        return ValueError(
            f"{what} found at paths:\n  - {path_str(first)}\n  - {path_str(second)}\n"
            f"{reason} Remove the duplicate, or use graph mode "
            f"(nnx.{self.where}(..., graph=True)), which shares it."
        )

    def variable(self, x: Variable, path: Path) -> None:
        first = self.variables.setdefault(id(x), path)
        if first is not path:
            raise self._error(
                f"Duplicate {type(x).__name__}", first, path,
                "Tree mode (graph=False) does not support shared references.",
            )

    def enter(self, x: Any, path: Path) -> None:
        first = self.walking.setdefault(id(x), path)
        if first is not path:
            raise self._error(
                f"Cycle: {type(x).__name__}", first, path,
                "Tree mode (graph=False) does not support cycles.",
            )

    def leave(self, x: Any) -> None:
        self.walking.pop(id(x), None)


# -- iter_graph ----------------------------------------------------------------------------


def iter_graph(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Path, Any]]:
    """Yield ``(path, value)`` for every graph node, Variable and array reachable from
    ``node``, children before parents (the root last, with path ``()``); containers are looked
    into and static values skipped. In graph mode a shared node or Variable is yielded once;
    arrays are yielded wherever they are.

    Args:
      node: the graph (or pytree) to walk.
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    if _graph(graph):
        return _iter_graph(node)
    return _iter_tree(node, (), _TreeGuard("iter_graph"))


def reachable(tree: Any, root: str = "") -> Iterator[tuple[int, str, Any]]:
    """``(k, where, obj)`` for every graph node and Variable reachable from the ``k``-th
    graph-node leaf of the pytree ``tree``: ``where`` names the place (``root``, the leaf's key
    path, then the path inside it), parents before children. An object shared inside one leaf
    comes once; one reached from several leaves comes once for each (for aliasing checks)."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_node)[0]
    for k, (path, leaf) in enumerate(paths_leaves):
        if not is_node(leaf):
            continue
        base = root + jax.tree_util.keystr(path)
        for sub, obj in reversed(list(_iter_graph(leaf))):
            if is_node(obj):
                yield k, base + "".join(f"/{key}" for key in sub), obj


def _yielded(x: Any) -> bool:
    return isinstance(x, (Variable, *ARRAY_TYPES)) or _is_child_node(x)


def _iter_graph(root: Any) -> Iterator[tuple[Path, Any]]:
    visited: set[int] = set()
    stack: list[tuple[Path, Any, bool]] = [((), root, False)]
    while stack:
        path, x, done = stack.pop()
        if done:
            yield path, x
            continue
        if isinstance(x, Variable | GraphNode):
            if id(x) in visited:
                continue
            visited.add(id(x))
        items = _graph_items(x)
        if items is None:
            if _yielded(x):
                yield path, x
            continue
        if _yielded(x) or x is root:
            stack.append((path, x, True))
        forced = x._graph_forced if isinstance(x, GraphNode) else None
        for key, child in reversed(items):
            if forced is None or forced(key) != "static":
                stack.append(((*path, key), child, False))


def _iter_tree(x: Any, path: Path, guard: _TreeGuard) -> Iterator[tuple[Path, Any]]:
    if isinstance(x, Variable):
        guard.variable(x, path)
    items = _tree_items(x, guard.where, path)
    if items is None:
        if _yielded(x):
            yield path, x
        return
    guard.enter(x, path)
    for key, child in items:
        yield from _iter_tree(child, (*path, key), guard)
    guard.leave(x)
    if _yielded(x) or not path:
        yield path, x


# -- children ----------------------------------------------------------------------------


def _children(
    node: Any, graph: bool | None, keep: Callable[[Any], bool], where: str
) -> Iterator[tuple[Any, Any]]:
    if _graph(graph):
        if not isinstance(node, GraphNode):
            raise ValueError(
                f"{where} expects a graph node, got {type(node).__name__}; for a plain pytree "
                "use graph=False."
            )
        items = node._graph_items()
    else:
        items = _tree_items(node, where, ())
        if items is None:
            raise ValueError(
                f"{where} expects a pytree node, got {type(node).__name__}."
            )
    for key, child in items:
        if keep(child):
            yield key, child


def _is_child_node(x: Any) -> bool:
    # the List / Dict standing for a plain list or dict is a container, not a child node
    return isinstance(x, GraphNode) and not x._plain


def iter_children(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(key, child)`` for the direct children of ``node`` that are graph nodes or
    Variables (``graph=False``: its pytree children that are).

    Args:
      node: a graph node (or, in tree mode, a pytree).
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    return _children(
        node, graph, lambda x: _is_child_node(x) or isinstance(x, Variable), "iter_children"
    )


def iter_module_children(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Any, Any]]:
    """Like ``iter_children`` but only the children that are graph nodes (no Variables)."""
    return _children(node, graph, _is_child_node, "iter_children")


# -- recursive_map and map ---------------------------------------------------------------


def recursive_map(
    f: Callable[[Path, Any], Any], node: Any, /, *, graph: bool | None = None
) -> Any:
    """Apply ``f(path, value)`` to every node, Variable and leaf of ``node``, children first,
    and build the result from what it returns (``f`` may return its argument, mutated, or a
    replacement). The graph is copied first (sharing the Variables), so ``node`` is not
    changed; in graph mode shared objects are mapped once and stay shared.

    Args:
      f: ``(path, value) -> new value``.
      node: the graph to map.
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    if _graph(graph):
        from nnx.graph import clone  # builds on this module

        copy = clone(node, variables=False, graph=True)
        return _map_graph(f, copy, (), {}, set())
    return _map_tree(f, node, (), _TreeGuard("recursive_map"))


def _set_child(parent: Any, key: Any, value: Any) -> None:
    from nnx.object import Object

    if isinstance(parent, Object):
        setattr(parent, key, value)
    else:
        parent[key] = value


def _map_graph(
    f: Callable[[Path, Any], Any], x: Any, path: Path, results: dict[int, Any], walking: set[int]
) -> Any:
    if isinstance(x, Variable | GraphNode):
        if id(x) in results:
            return results[id(x)]
        if id(x) in walking:
            raise ValueError(
                f"recursive_map: found a cycle at '{path_str(path)}': {type(x).__name__} "
                "contains itself, so it has no mapped value yet."
            )
        walking.add(id(x))
    items = _graph_items(x)
    if items is not None:
        new_items = [(k, c, _map_graph(f, c, (*path, k), results, walking)) for k, c in items]
        if isinstance(x, GraphNode) or type(x) in (list, dict):
            for key, old, new in new_items:
                if new is not old:
                    _set_child(x, key, new)
        elif any(new is not old for _, old, new in new_items):
            x = pytree_children(x)[1].unflatten([new for _, _, new in new_items])
    out = f(path, x)
    if isinstance(x, Variable | GraphNode):
        results[id(x)] = out
    return out


def _map_tree(f: Callable[[Path, Any], Any], x: Any, path: Path, guard: _TreeGuard) -> Any:
    if isinstance(x, Variable):
        guard.variable(x, path)
    items = _tree_items(x, guard.where, path)
    if items is None:
        return f(path, x)
    guard.enter(x, path)
    children = [_map_tree(f, c, (*path, k), guard) for k, c in items]
    guard.leave(x)
    return f(path, pytree_children(x)[1].unflatten(children))


class _AsGivenUnflattener(Unflattener):
    """Builds the graph with each Variable's place taken by its leaf as it is (a raw value
    stays raw)."""

    __slots__ = ()

    def variable(self, d: Any) -> Any:
        leaf = self._next_leaf()
        self.objects[d.index] = leaf
        return leaf


def map(  # noqa: A001 - the Flax name
    f: Callable[[Path, Any], Any], node: A, /, *, graph: bool | None = None,
    recreate_variables: bool = True,
) -> A:
    """A copy of ``node`` with every state leaf (usually a Variable) replaced by
    ``f(path, leaf)``; raw values returned by ``f`` become Variables of the same type again,
    or, with ``recreate_variables=False``, take the Variables' places as they are.

    Args:
      f: ``(path, leaf) -> new leaf``.
      node: the graph to map.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      recreate_variables: wrap raw results in Variables like the ones they replace.
    """
    from nnx.graph import flatten  # builds on this module

    graphdef, leaves = flatten(node, graph=graph)
    new = [f(p, v) for p, v in zip(graphdef.paths, leaves, strict=True)]
    unflattener = Unflattener(new) if recreate_variables else _AsGivenUnflattener(new)
    return unflattener.unflatten(graphdef.root)


# -- find_duplicates -----------------------------------------------------------------------


def find_duplicates(node: Any, /, *, only: Any = ...) -> list[list[Path]]:
    """Per graph node, Variable or array reachable more than once: the paths it is found at
    (a shared node is not looked into again, so its contents are not reported too).

    Args:
      node: the graph to search.
      only: a filter on the objects to report (e.g. ``nnx.Param``).
    """
    predicate = filterlib.to_predicate(only)
    paths_of: dict[int, list[Path]] = {}

    def walk(x: Any, path: Path) -> None:
        tracked = isinstance(x, (Variable, *ARRAY_TYPES)) or _is_child_node(x)
        if tracked:
            if id(x) in paths_of:
                if predicate(path, x):
                    paths_of[id(x)].append(path)
                return
            paths_of[id(x)] = [path]
        items = _graph_items(x)
        for key, child in items or ():
            walk(child, (*path, key))

    walk(node, ())
    return [p for p in paths_of.values() if len(p) > 1]


__all__ = [
    "find_duplicates", "is_graph_node", "is_node", "iter_children", "iter_graph",
    "iter_module_children", "map", "map_state", "recursive_map",
]
