"""The graph API: split, merge, update, state, graphdef, clone and pop.

Flattening (``nnx.flatten``) turns a graph into a static ``GraphDef`` plus a flat list of leaves
(see ``nnx._graphdef``). In graph mode (``graph=True``, the default setting) every graph node
and Variable is visited once: a second reference becomes a ``RefDef`` to the first, so shared
objects appear once in the State and are shared again after ``merge``; reference cycles
terminate. In tree mode (``graph=False``) graph nodes are plain pytrees: nothing is shared, and
a Variable reached twice raises. A value that is neither a graph node nor a container (an
array, ``42``) is its own State: ``split(x)`` returns it as the state and ``merge`` gives it
back.

Walks over a graph (``iter_graph``, ``recursive_map``, ``map``...) are in ``nnx._walks`` and
re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from nnx._graphdef import LEAF, Flattener, GraphDef, Unflattener, pytree_children
from nnx._graphdef import unflatten as _unflatten_leaves
from nnx._modes import set_graph_mode
from nnx._node import GraphNode
from nnx._tracing import check_same_trace
from nnx._typing import ARRAY_TYPES, Key, Path, path_str
from nnx._walks import (
    find_duplicates,
    is_graph_node,
    is_node,
    iter_children,
    iter_graph,
    iter_module_children,
    map,
    map_state,
    recursive_map,
)
from nnx.object import Object
from nnx.statelib import State, is_state_leaf, partition_pairs
from nnx.variablelib import Variable

A = TypeVar("A")
Node = TypeVar("Node")
PureState = tuple[GraphDef[Node], State]  # ``nnx.PureState[M]``: the pair ``nnx.split`` returns


def graph_flag(graph: bool | None) -> bool:
    """``graph`` itself, or the current ``nnx.set_graph_mode`` setting when None."""
    return set_graph_mode.current_value() if graph is None else bool(graph)


def _is_root_leaf(node: Any) -> bool:
    return not isinstance(node, Variable | GraphNode) and pytree_children(node)[1] is None


def flatten(node: Any, *, graph: bool | None = None) -> tuple[GraphDef, list[Any]]:
    """Flatten ``node`` into a GraphDef and its leaves (Variables and raw arrays), in order.

    Args:
      node: a graph node, Variable, pytree holding them, or a single value.
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    if _is_root_leaf(node):
        return GraphDef(LEAF, ((),)), [node]
    tree = not graph_flag(graph)
    f = Flattener(tree=tree)
    root = f.flatten(node)
    if tree and _REF is not None:
        _check_no_shared_refs(node)
    return GraphDef(root, tuple(f.paths)), f.leaves


_REF = getattr(jax, "Ref", None)  # jax's mutable array references


def _check_no_shared_refs(node: Any) -> None:
    """Tree mode: a mutable array reference reached twice cannot be a pytree either."""
    seen: dict[int, Any] = {}
    entries = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: isinstance(x, Variable))[0]
    for path, x in entries:
        if isinstance(x, _REF):
            first = seen.setdefault(id(x), path)
            if first is not path:
                raise ValueError(
                    f"Duplicate {type(x).__name__} found at paths:\n"
                    f"  - {jax.tree_util.keystr(first)}\n  - {jax.tree_util.keystr(path)}\n"
                    "Tree mode (graph=False) does not support shared references; use graph "
                    "mode (graph=True) or pass distinct references."
                )


def unflatten(graphdef: GraphDef, leaves: list[Any]) -> Any:
    """Rebuild a graph from a GraphDef and its leaves (the inverse of ``flatten``)."""
    return _unflatten_leaves(graphdef, leaves)


def _pairs(node: Any, graph: bool | None) -> tuple[GraphDef, list[tuple[Path, Any]]]:
    graphdef, leaves = flatten(node, graph=graph)
    return graphdef, list(zip(graphdef.paths, leaves, strict=True))


def split(node: Any, *filters: Any, graph: bool | None = None) -> tuple[Any, ...]:
    """Split ``node`` into a GraphDef and one State per filter (all of it without filters).

    Filters must together match every Variable; each Variable goes to the first that matches.
    A node that is a single Variable or value gives it back as the state.

    Args:
      node: a Module, another graph node, a Variable, or a pytree holding them.
      *filters: filters (types, strings, ``...``, callables, ``nnx.All``...).
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    graphdef, pairs = _pairs(node, graph)
    states = partition_pairs(pairs, filters or (...,), exhaustive=True)
    return (graphdef, *states)


def state(node: Any, *filters: Any, graph: bool | None = None) -> Any:
    """The State of ``node``: all of it, or one State per filter (unmatched Variables dropped).

    Args:
      node: a graph node or a pytree holding them.
      *filters: filters selecting Variables.
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    _, pairs = _pairs(node, graph)
    states = partition_pairs(pairs, filters or (...,), exhaustive=False)
    return states[0] if len(states) == 1 else tuple(states)


variables = state


def graphdef(node: Any, *, graph: bool | None = None) -> GraphDef:
    """The GraphDef of ``node`` (``graph``: graph or tree mode, None for the setting)."""
    return flatten(node, graph=graph)[0]


def _flat_from_states(states: tuple[Any, ...]) -> dict[Path, Any]:
    flat: dict[Path, Any] = {}
    for s in states:
        if isinstance(s, Mapping):
            flat.update(State.flatten_mapping(s))
        elif s is not None:
            flat[()] = s
    return flat


def merge(graphdef: Any, /, *states: Any, copy: bool = False) -> Any:
    """Build a new graph from a GraphDef and the States from ``split`` (or pure dicts), or
    from the GraphStates of ``nnx.unpack``.

    Variables found in the States are used as they are, or copied with ``copy=True``; raw
    values are wrapped in new Variables of the recorded type and metadata.

    Args:
      graphdef: the GraphDef (or a GraphState).
      *states: the States (or GraphStates), or one list of leaves in GraphDef order.
      copy: copy the Variables of the States instead of using them.
    """
    from nnx._graph_state import GraphState, graphdef_of_states  # builds on this module

    if isinstance(graphdef, GraphState):
        graphdef, states = graphdef_of_states((graphdef, *states))
    elif not isinstance(graphdef, GraphDef):
        raise TypeError(
            f"merge expects a GraphDef (or GraphState) as its first argument, got "
            f"{type(graphdef).__name__}; use nnx.update(node, state) to write a State into an "
            "existing object."
        )
    leaves = leaves_for(graphdef, states)
    if copy:
        leaves = [v.copy() if isinstance(v, Variable) else v for v in leaves]
    return Unflattener(leaves).unflatten(graphdef.root)


def leaves_for(graphdef: GraphDef, states: tuple[Any, ...]) -> list[Any]:
    """The leaves ``graphdef`` needs, in its order, from States (by path) or one list."""
    if not states:
        raise TypeError("merge() missing 1 required positional argument: 'state'")
    if len(states) == 1 and isinstance(states[0], list):
        if len(states[0]) != graphdef.num_leaves:
            raise ValueError(
                f"merge: the GraphDef has {graphdef.num_leaves} leaves, got a list of "
                f"{len(states[0])}"
            )
        return list(states[0])
    flat = _flat_from_states(states)
    missing = [p for p in graphdef.paths if p not in flat]
    if missing:
        shown = ", ".join(path_str(p) for p in missing[:10])
        raise ValueError(
            f"merge: the States are missing {len(missing)} Variable(s) that the GraphDef "
            f"needs: {shown}. Pass every State returned by split."
        )
    return [flat[p] for p in graphdef.paths]


# -- update ------------------------------------------------------------------------------


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


def _has_raw_leaf(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_raw_leaf(v) for v in value.values())
    return not isinstance(value, Variable)


def _update_variable(var: Variable, new: Any, path: Path) -> None:
    if isinstance(new, Variable):
        var.update_from(new)
    elif isinstance(new, Mapping):
        if new:  # an empty State stands for a shared Variable seen earlier
            raise ValueError(
                f"update: '{path_str(path)}' is a {type(var).__name__}, got a mapping with keys "
                f"{sorted(str(k) for k in new)}."
            )
    else:
        _check_shape(path, var, new)
        var.set_raw_value(new)


def _update_value(current: Any, new: Any, path: Path) -> Any:
    """Return the value that replaces ``current`` (Variables and mutable containers are
    updated in place and returned)."""
    if isinstance(current, Variable):
        _update_variable(current, new, path)
        return current
    if isinstance(new, Mapping):
        if isinstance(current, GraphNode):
            _update_node(current, new, path)
            return current
        if type(current) in (dict, list):
            _update_container(current, new, path)
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
            f"cannot write a mapping with keys {sorted(str(k) for k in new)} into it."
        )
    keys = [k for k, _ in items]
    unknown = [k for k in new if k not in keys]
    if unknown:
        raise KeyError(f"update: '{path_str((*path, unknown[0]))}' does not exist in the model.")
    children = [_update_value(c, new[k], (*path, k)) if k in new else c for k, c in items]
    if all(a is b for a, b in zip(children, (c for _, c in items), strict=True)):
        return current
    return treedef.unflatten(children)


def _resolve_key(keys: Any, key: Any) -> Any:
    if isinstance(key, str) and key not in keys and key.lstrip("-").isdigit() and int(key) in keys:
        return int(key)  # a list index that became a string in a JSON round trip
    return key


def _missing_key(node: Any, key: Any, new: Any, path: Path, keys: Any) -> bool:
    """Raise for a new key that carries raw values; True when a Variable may be added."""
    if _has_raw_leaf(new) or isinstance(new, Mapping):
        raise KeyError(
            f"update: '{path_str(path)}' does not exist in {type(node).__name__} (it has "
            f"{sorted(str(k) for k in keys)})."
        )
    return True


def _update_container(node: dict | list, mapping: Mapping, path: Path) -> None:
    keys = dict.keys(node) if isinstance(node, dict) else range(len(node))
    for key, new in mapping.items():
        key = _resolve_key(keys, key)
        child_path = (*path, key)
        if key not in keys:
            if isinstance(node, list):
                raise KeyError(f"update: '{path_str(child_path)}' is not an index of the list.")
            _missing_key(node, key, new, child_path, keys)
            node[key] = new
            continue
        replacement = _update_value(node[key], new, child_path)
        if replacement is not node[key]:
            node[key] = replacement


def _update_node(node: GraphNode, mapping: Mapping, path: Path) -> None:
    items = dict(node._graph_items())
    for key, new in mapping.items():
        key = _resolve_key(items, key)
        child_path = (*path, key)
        if key not in items:
            _missing_key(node, key, new, child_path, items)
            _set_structural(node, key, new)
            continue
        current = items[key]
        replacement = _update_value(current, new, child_path)
        if replacement is not current:
            if isinstance(replacement, Variable) or isinstance(current, Variable):
                _set_structural(node, key, replacement)
            else:
                check_same_trace(node, node._graph_trace())
                node._graph_set(key, replacement)


def _set_structural(node: GraphNode, key: Any, value: Any) -> None:
    if isinstance(node, Object):
        setattr(node, key, value)
    else:
        node[key] = value


def update(node: Any, state: Any, /, *states: Any) -> None:
    """Write the values of States (or pure nested dicts of arrays) into ``node`` in place.

    Variables keep their identity and take raw values as they are (``set_raw_value``, not a
    subclass's ``set_value``). Raw arrays (a pure dict from a checkpoint) are checked: a path
    the node lacks or a shape that differs raises, naming the path. Variables in a State (from
    ``split``) may add paths or change shapes, as in Flax.

    Args:
      node: a graph node, a Variable, or a container of them (tuple, list, dict).
      state: a State, GraphState or nested mapping (a Variable or value for a Variable node).
      *states: more of them, applied in order.
    """
    all_states = (state, *states)
    if isinstance(node, Variable):
        given = [s for s in all_states if not isinstance(s, Mapping) or s]
        if len(given) != 1:
            raise ValueError(
                f"update of a Variable expects exactly one non-empty state, got {len(given)}."
            )
        _update_variable(node, given[0], ())
        return
    for s in all_states:
        if not isinstance(s, Mapping):
            raise TypeError(f"update expects States or mappings, got {type(s).__name__}")
        if _update_value(node, s, ()) is not node:
            raise ValueError(
                f"update: the root is an immutable {type(node).__name__} and the given state "
                "replaces raw values inside it; update a graph node, a list or a dict instead."
            )


# -- clone and pop -------------------------------------------------------------------------


def clone(
    node: A, variables: bool = True, *, arrays: bool = False, graph: bool | None = None
) -> A:
    """A deep copy of ``node`` that keeps its internal sharing.

    Args:
      node: the graph (or pytree of nodes) to copy.
      variables: copy the Variables (True); False shares them with ``node``.
      arrays: also copy the array buffers (needed to donate both copies to ``jax.jit``).
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    if arrays and not variables:
        raise ValueError("clone(arrays=True) copies the Variables too: it needs variables=True.")
    graphdef, leaves = flatten(node, graph=graph)
    if arrays:
        leaves = [
            v.copy(_copy_array(v._raw_value)) if isinstance(v, Variable) else _copy_array(v)
            for v in leaves
        ]
    elif variables:
        leaves = [v.copy() if isinstance(v, Variable) else v for v in leaves]
    return Unflattener(leaves).unflatten(graphdef.root)


def _copy_array(x: Any) -> Any:
    return jax.tree.map(lambda a: jnp.copy(a) if isinstance(a, jax.Array) else np.copy(a), x)


def pop(node: Any, *filters: Any) -> Any:
    """Remove the Variables (and raw arrays) matching ``filters`` from ``node``, returning them
    as one State per filter. ``node`` may be a graph node or a dict or list of them.

    Args:
      node: where to remove from.
      *filters: at least one filter; each value goes to the first that matches.
    """
    from nnx import filterlib

    if not filters:
        raise ValueError("pop expects at least one filter")
    predicates = filterlib.filters_to_predicates(filters)
    found: list[dict[Path, Any]] = [{} for _ in predicates]
    seen: set[int] = set()

    def walk(parent: Any, path: Path) -> None:
        if isinstance(parent, GraphNode):
            if id(parent) in seen:
                return
            seen.add(id(parent))
            items = parent._graph_items()
        elif isinstance(parent, dict):
            items = list(parent.items())
        elif isinstance(parent, list | tuple):
            items = list(enumerate(parent))
        else:
            return
        for key, child in items:
            child_path = (*path, key)
            if not isinstance(child, (Variable, *ARRAY_TYPES)):
                walk(child, child_path)
                continue
            if id(child) in seen:
                continue
            for bucket, predicate in zip(found, predicates, strict=True):
                if predicate(child_path, child):
                    seen.add(id(child))
                    _remove(parent, key, child_path)
                    bucket[child_path] = child
                    break

    walk(node, ())
    states = [State.from_flat_path(b) for b in found]
    return states[0] if len(states) == 1 else tuple(states)


def _remove(parent: Any, key: Any, path: Path) -> None:
    if isinstance(parent, Object):
        delattr(parent, key)
    elif isinstance(parent, list):
        parent[key] = None  # keep the other indices
    elif isinstance(parent, dict):
        del parent[key]
    else:
        raise ValueError(
            f"pop: cannot remove '{path_str(path)}' from an immutable {type(parent).__name__}."
        )


__all__ = [
    "GraphDef", "Key", "PureState", "clone", "find_duplicates", "flatten", "graphdef",
    "is_graph_node", "is_node", "is_state_leaf", "iter_children", "iter_graph",
    "iter_module_children", "map", "map_state", "merge", "pop", "recursive_map", "split",
    "state", "unflatten", "update", "variables",
]
