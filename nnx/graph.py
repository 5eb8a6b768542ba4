"""The graph API: split, merge, update, state, clone, pop and walks over an object graph.

Flattening (``nnx.flatten``) turns a graph into a static ``GraphDef`` plus a flat list of leaves
(see ``nnx.graphdef``). Every graph node and Variable is visited once: a second reference becomes
a ``RefDef`` to the first, so shared objects appear once in the State and are shared again after
``merge``; reference cycles terminate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from nnx._graphdef import (
    _STATIC_FAST,
    GraphDef,
    Unflattener,
    flatten,
    pytree_children,
    unflatten,
)
from nnx._tracing import check_same_trace
from nnx._typing import ARRAY_TYPES, Path, path_str
from nnx.object import GraphNode, Object
from nnx.statelib import State, is_state_leaf, partition_pairs
from nnx.variablelib import Variable

# -- public graph API ------------------------------------------------------------------


def _flat_leaves(node: Any) -> tuple[GraphDef, list[tuple[Path, Any]]]:
    graphdef, leaves = flatten(node)
    return graphdef, list(zip(graphdef.paths, leaves, strict=True))


def split(node: Any, *filters: Any) -> tuple[Any, ...]:
    """Split ``node`` into a GraphDef and one State per filter (all of it without filters).

    Filters must together match every Variable; each Variable goes to the first that matches.

    Args:
      node: a Module, another graph node, a Variable, or a pytree holding them.
      *filters: filters (types, strings, ``...``, callables, ``nnx.All``...).
    """
    graphdef, pairs = _flat_leaves(node)
    states = partition_pairs(pairs, filters or (...,), exhaustive=True)
    return (graphdef, *states)


def state(node: Any, *filters: Any) -> Any:
    """The State of ``node``: all of it, or one State per filter (unmatched Variables dropped)."""
    _, pairs = _flat_leaves(node)
    states = partition_pairs(pairs, filters or (...,), exhaustive=False)
    return states[0] if len(states) == 1 else tuple(states)


variables = state


def graphdef(node: Any) -> GraphDef:
    """The GraphDef of ``node``."""
    return flatten(node)[0]


def _flat_from_states(states: tuple[Any, ...]) -> dict[Path, Any]:
    flat: dict[Path, Any] = {}
    for s in states:
        if isinstance(s, Mapping):
            flat.update(State.flatten_mapping(s))
        elif s is not None:
            flat[()] = s
    return flat


def merge(graphdef: GraphDef, *states: Any) -> Any:
    """Build a new graph from a GraphDef and the States from ``split`` (or pure dicts).

    Variables found in the States are used as they are (no copy); raw values are wrapped in new
    Variables of the recorded type and metadata.
    """
    if not isinstance(graphdef, GraphDef):
        raise TypeError(
            f"merge expects a GraphDef as its first argument, got {type(graphdef).__name__}; "
            "use nnx.update(node, state) to write a State into an existing object."
        )
    flat = _flat_from_states(states)
    missing = [p for p in graphdef.paths if p not in flat]
    if missing:
        shown = ", ".join(path_str(p) for p in missing[:10])
        raise ValueError(
            f"merge: the States are missing {len(missing)} Variable(s) that the GraphDef needs: "
            f"{shown}. Pass every State returned by split."
        )
    return Unflattener([flat[p] for p in graphdef.paths]).unflatten(graphdef.root)


def _shape_of(x: Any) -> tuple[int, ...] | None:
    if isinstance(x, Variable):
        x = x._raw_value
    if hasattr(x, "shape"):
        return tuple(x.shape)
    if isinstance(x, int | float | complex | bool | np.generic):
        return ()
    return None


def _check_shape(path: Path, old: Any, new: Any) -> None:
    old_shape, new_shape = _shape_of(old), _shape_of(new)
    if old_shape is not None and new_shape is not None and old_shape != new_shape:
        raise ValueError(
            f"update: shape mismatch at '{path_str(path)}': the model has {old_shape}, the "
            f"given value has {new_shape}."
        )


def _get_child(node: Any, key: Any, default: Any) -> Any:
    if isinstance(node, GraphNode):
        for k, v in node._graph_items():
            if k == key and type(k) is type(key):
                return v
        return default
    return default


def _has_raw_leaf(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_raw_leaf(v) for v in value.values())
    return not isinstance(value, Variable)


def _update_value(current: Any, new: Any, path: Path) -> Any:
    """Return the value that replaces ``current`` (Variables are updated in place)."""
    if isinstance(current, Variable):
        if isinstance(new, Variable):
            current.update_from(new)
        else:
            _check_shape(path, current, new)
            current.set_value(new)
        return current
    if isinstance(new, Mapping):
        if isinstance(current, GraphNode):
            _update_node(current, new, path)
            return current
        return _update_pytree(current, new, path)
    if isinstance(new, Variable):
        return new
    _check_shape(path, current, new)
    return new


def _update_pytree(current: Any, new: Mapping, path: Path) -> Any:
    items, treedef = pytree_children(current)
    if treedef is None:
        raise ValueError(
            f"update: '{path_str(path)}' holds a {type(current).__name__}, not a node; "
            f"cannot write a mapping with keys {sorted(map(str, new))} into it."
        )
    keys = [k for k, _ in items]
    unknown = [k for k in new if k not in keys]
    if unknown:
        raise KeyError(f"update: '{path_str((*path, unknown[0]))}' does not exist in the model.")
    return treedef.unflatten(
        [_update_value(child, new[k], (*path, k)) if k in new else child for k, child in items]
    )


def _update_node(node: GraphNode, mapping: Mapping, path: Path) -> None:
    items = dict(node._graph_items())
    for key, new in mapping.items():
        if isinstance(key, str) and key not in items and key.isdigit() and int(key) in items:
            key = int(key)  # a list index that became a string in a JSON round trip
        child_path = (*path, key)
        if key not in items:
            if _has_raw_leaf(new) or isinstance(new, Mapping):
                raise KeyError(
                    f"update: '{path_str(child_path)}' does not exist in "
                    f"{type(node).__name__} (it has {sorted(map(str, items))})."
                )
            _set_structural(node, key, new)
            continue
        current = items[key]
        replacement = _update_value(current, new, child_path)
        if replacement is not current:
            if isinstance(replacement, Variable) or isinstance(current, Variable):
                _set_structural(node, key, replacement)
            else:
                trace = getattr(node, "_trace", None) or getattr(vars(node), "trace", None)
                check_same_trace(node, trace)
                node._graph_set(key, replacement)


def _set_structural(node: GraphNode, key: Any, value: Any) -> None:
    if isinstance(node, Object):
        setattr(node, key, value)
    else:
        node[key] = value


def update(node: Any, *states: Any) -> None:
    """Write the values of States (or pure nested dicts of arrays) into ``node`` in place.

    Variables keep their identity. Raw arrays (a pure dict from a checkpoint) are checked: a
    path the node lacks or a shape that differs raises, naming the path. Variables in a State
    (from ``split``) may add paths or change shapes, as in Flax.
    """
    for s in states:
        if isinstance(node, Variable):
            _update_value(node, s, ())
        elif isinstance(s, Mapping):
            if not isinstance(node, GraphNode):
                raise TypeError(f"update expects a graph node, got {type(node).__name__}")
            _update_node(node, s, ())
        else:
            raise TypeError(f"update expects States or mappings, got {type(s).__name__}")


def clone(node: Any) -> Any:
    """An independent deep copy of ``node`` that keeps its internal sharing."""
    graphdef, leaves = flatten(node)
    copies = [v.copy() if isinstance(v, Variable) else v for v in leaves]
    return Unflattener(copies).unflatten(graphdef.root)


def pop(node: Any, *filters: Any) -> Any:
    """Remove the Variables matching ``filters`` from ``node`` and return them as State(s)."""
    if not filters:
        raise ValueError("pop expects at least one filter")
    _, pairs = _flat_leaves(node)
    states = partition_pairs(pairs, filters, exhaustive=False)
    for s in states:
        for path, _ in s.flat_state():
            parent = node
            for key in path[:-1]:
                parent = _get_child(parent, key, None)
            if isinstance(parent, GraphNode):
                if isinstance(parent, list):
                    parent[path[-1]] = None
                else:
                    _delete_child(parent, path[-1])
    return states[0] if len(states) == 1 else tuple(states)


def _delete_child(node: GraphNode, key: Any) -> None:
    if isinstance(node, Object):
        delattr(node, key)
    else:
        del node[key]


def iter_graph(node: Any) -> Iterator[tuple[Path, Any]]:
    """Yield ``(path, value)`` for every graph node, Variable and array leaf, children before
    parents (the root last, with path ``()``); a shared object is yielded once."""
    seen: set[int] = set()
    yield from _iter_graph(node, (), seen)


def _iter_graph(value: Any, path: Path, seen: set[int]) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, Variable | GraphNode):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, GraphNode):
            for key, child in value._graph_items():
                if value._graph_forced(key) != "static":
                    yield from _iter_graph(child, (*path, key), seen)
        yield path, value
    elif isinstance(value, ARRAY_TYPES):
        yield path, value
    elif not isinstance(value, _STATIC_FAST) and (
        isinstance(value, list | tuple | dict) or not callable(value)
    ):
        for key, child in pytree_children(value)[0]:
            yield from _iter_graph(child, (*path, key), seen)


def iter_children(node: GraphNode) -> Iterator[tuple[Any, Any]]:
    """Yield ``(key, child)`` for the direct graph-node children of ``node``."""
    for key, child in node._graph_items():
        if isinstance(child, GraphNode):
            yield key, child


def find_duplicates(node: Any) -> list[list[Path]]:
    """Paths at which the same graph node or Variable is reachable more than once."""
    paths_of: dict[int, list[Path]] = {}

    def walk(value: Any, path: Path, stack: set[int]) -> None:
        if isinstance(value, Variable | GraphNode):
            paths_of.setdefault(id(value), []).append(path)
            if isinstance(value, GraphNode) and id(value) not in stack:
                stack.add(id(value))
                for key, child in value._graph_items():
                    walk(child, (*path, key), stack)
                stack.discard(id(value))
        elif isinstance(value, list | tuple | dict):
            items = enumerate(value) if not isinstance(value, dict) else value.items()
            for key, child in items:
                walk(child, (*path, key), stack)

    walk(node, (), set())
    return [p for p in paths_of.values() if len(p) > 1]


def map_state(f: Callable[[Path, Any], Any], state_: State) -> State:
    """A new State with ``f(path, leaf)`` applied to every leaf."""
    return State.from_flat_path([(p, f(p, v)) for p, v in state_.flat_state()])


def is_graph_node(x: Any) -> bool:
    """Whether ``x`` is a graph node (Module, Rngs, List, Dict, other Object)."""
    return isinstance(x, GraphNode)


def is_node(x: Any) -> bool:
    """Whether ``x`` is a graph node or a Variable."""
    return isinstance(x, GraphNode | Variable)


__all__ = [
    "GraphDef", "flatten", "unflatten", "split", "merge", "update", "state", "variables",
    "graphdef", "clone", "pop", "iter_graph", "iter_children", "find_duplicates", "is_graph_node",
    "is_state_leaf", "map_state",
]
