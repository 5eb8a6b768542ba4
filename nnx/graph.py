"""The object graph: flatten nodes into a static GraphDef plus a flat list of leaves, and back.

A leaf is a Variable or a raw array found in a node's attributes. Every graph node and Variable
is visited once: a second reference becomes a ``ref`` to the first, so shared objects appear
once in the State and are shared again after ``merge``; reference cycles terminate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from nnx import filters as filterlib
from nnx.object import ARRAY_TYPES, GraphNode, _sort_key
from nnx.state import State, is_state_leaf
from nnx.statics import Static
from nnx.variables import Variable, build_variable, metadata_key

Path = tuple[Any, ...]


class _LeafMarker:
    """Marks a raw (non-Variable) array leaf in a GraphDef."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Leaf"

    def __reduce__(self) -> str:
        return "LEAF"


LEAF = _LeafMarker()
_STATIC_FAST = (int, float, complex, str, bool, bytes, type(None), type)


class GraphDef:
    """The static part of a graph: node types, static attributes, Variable types and metadata,
    and where shared references point. Hashable and comparable, so it can key a jit cache.
    """

    __slots__ = ("root", "paths", "_hash")

    def __init__(self, root: Any, paths: tuple[Path, ...]):
        self.root = root
        self.paths = paths  # derived from root: the path of each leaf, in leaf order
        self._hash = hash(root)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, GraphDef) and self._hash == other._hash and self.root == other.root
        )

    @property
    def num_leaves(self) -> int:
        return len(self.paths)

    def merge(self, *states: Any) -> Any:
        """Build a new graph from this GraphDef and States; see ``nnx.merge``."""
        return merge(self, *states)

    def __repr__(self) -> str:
        from nnx.display import graphdef_repr

        return graphdef_repr(self)


# A GraphDef is a pytree without leaves (it is its own aux data), so it can be passed to
# jax.jit and other JAX transforms as an ordinary argument, as in ``forward(graphdef, state)``.
jax.tree_util.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


# -- flatten ---------------------------------------------------------------------------


def _key_from_path_entry(entry: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


class Flattener:
    """One depth-first walk over one or more roots that share a reference table."""

    __slots__ = ("index", "objects", "leaves", "paths", "owners")

    def __init__(self):
        self.index: dict[int, int] = {}
        self.objects: list[Any] = []  # index -> object; also keeps ids valid
        self.leaves: list[Any] = []
        self.paths: list[Path] = []
        # Per leaf: the Variable, or (node, key) for a raw array held directly by a graph node,
        # or None for a raw array nested in a tuple/other container (no direct write-back).
        self.owners: list[Any] = []

    def _register(self, obj: Any) -> int:
        i = len(self.objects)
        self.index[id(obj)] = i
        self.objects.append(obj)
        return i

    def flatten(
        self, value: Any, path: Path = (), force_data: bool = False, owner: Any = None
    ) -> Any:
        """Return the definition of ``value`` and append its leaves; see module docstring.

        ``owner`` is ``(node, key)`` when ``value`` is held directly by a graph node.
        """
        if isinstance(value, Variable):
            i = self.index.get(id(value))
            if i is not None:
                return ("ref", i)
            i = self._register(value)
            object.__setattr__(value, "_seen", True)
            self.leaves.append(value)
            self.paths.append(path)
            self.owners.append(value)
            return ("var", type(value), i, metadata_key(value._metadata))
        if isinstance(value, GraphNode):
            i = self.index.get(id(value))
            if i is not None:
                return ("ref", i)
            i = self._register(value)
            value._graph_mark_seen()
            children = []
            for key, child in value._graph_items():
                forced = value._graph_forced(key)
                if forced == "static":
                    children.append((key, Static(child)))
                else:
                    children.append(
                        (key, self.flatten(child, (*path, key), forced == "data", (value, key)))
                    )
            return ("node", type(value), i, tuple(children))
        if isinstance(value, ARRAY_TYPES):
            self.leaves.append(value)
            self.paths.append(path)
            self.owners.append(owner)
            return LEAF
        if isinstance(value, _STATIC_FAST) and not force_data:
            return Static(value)
        if not force_data and callable(value) and not isinstance(value, list | tuple | dict):
            return Static(value)
        entries, treedef = jax.tree_util.tree_flatten_with_path(
            value, is_leaf=lambda x: x is not value
        )
        if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # not a container
            if force_data:
                self.leaves.append(value)
                self.paths.append(path)
                self.owners.append(owner)
                return LEAF
            return Static(value)
        start = len(self.leaves)
        children = tuple(
            self.flatten(child, (*path, _key_from_path_entry(entry[0])), force_data)
            for entry, child in entries
        )
        if len(self.leaves) == start and all(type(c) is Static for c in children):
            return Static(value)
        return ("pytree", treedef, children)


def flatten(node: Any) -> tuple[GraphDef, list[Any]]:
    """Flatten ``node`` into a GraphDef and its leaves (Variables and raw arrays), in order."""
    f = Flattener()
    root = f.flatten(node)
    return GraphDef(root, tuple(f.paths)), f.leaves


# -- unflatten -------------------------------------------------------------------------


class Unflattener:
    """Rebuild objects from definitions and leaves; ``existing`` maps indices to objects to
    update in place instead of creating new ones."""

    __slots__ = ("leaves", "pos", "objects", "existing")

    def __init__(self, leaves: list[Any], existing: dict[int, Any] | None = None):
        self.leaves = leaves
        self.pos = 0
        self.objects: dict[int, Any] = {}
        self.existing = existing

    def _next_leaf(self) -> Any:
        leaf = self.leaves[self.pos]
        self.pos += 1
        return leaf

    def unflatten(self, d: Any) -> Any:
        if type(d) is Static:
            return d.value
        if d is LEAF:
            leaf = self._next_leaf()
            return leaf._raw_value if isinstance(leaf, Variable) else leaf
        kind = d[0]
        if kind == "ref":
            return self.objects[d[1]]
        if kind == "var":
            _, typ, i, meta = d
            leaf = self._next_leaf()
            target = None if self.existing is None else self.existing.get(i)
            if target is not None:
                if isinstance(leaf, Variable):
                    target.update_from(leaf)
                else:
                    object.__setattr__(target, "_raw_value", leaf)
                    if metadata_key(target._metadata) != meta:
                        object.__setattr__(target, "_metadata", {k: s.value for k, s in meta})
                var = target
            elif isinstance(leaf, Variable):
                var = leaf
            else:
                var = build_variable(typ, leaf, {k: s.value for k, s in meta})
            self.objects[i] = var
            return var
        if kind == "node":
            _, typ, i, children = d
            node = None if self.existing is None else self.existing.get(i)
            if node is None:
                node = typ._graph_create()
            self.objects[i] = node
            node._graph_fill([(key, self.unflatten(c)) for key, c in children])
            return node
        if kind == "pytree":
            _, treedef, children = d
            return treedef.unflatten([self.unflatten(c) for c in children])
        raise ValueError(f"Unknown GraphDef entry {d!r}")


def unflatten(graphdef: GraphDef, leaves: list[Any]) -> Any:
    """Rebuild a graph from a GraphDef and its leaves (the inverse of ``flatten``)."""
    if len(leaves) != graphdef.num_leaves:
        raise ValueError(f"GraphDef expects {graphdef.num_leaves} leaves, got {len(leaves)}")
    return Unflattener(list(leaves)).unflatten(graphdef.root)


# -- public graph API ------------------------------------------------------------------


def _flat_leaves(node: Any) -> tuple[GraphDef, list[tuple[Path, Any]]]:
    graphdef, leaves = flatten(node)
    return graphdef, list(zip(graphdef.paths, leaves, strict=True))


def _partition(
    pairs: list[tuple[Path, Any]], filters: tuple[Any, ...], *, exhaustive: bool
) -> list[State]:
    predicates = filterlib.filters_to_predicates(filters)
    buckets: list[list[tuple[Path, Any]]] = [[] for _ in predicates]
    rest = []
    for path, leaf in pairs:
        for bucket, pred in zip(buckets, predicates, strict=True):
            if pred(path, leaf):
                bucket.append((path, leaf))
                break
        else:
            rest.append((path, leaf))
    if exhaustive and rest:
        shown = "\n".join(
            f"  {'/'.join(map(str, p)) or '<root>'}: {type(v).__name__}" for p, v in rest[:10]
        )
        more = f"\n  ... and {len(rest) - 10} more" if len(rest) > 10 else ""
        raise ValueError(
            f"Non-exhaustive filters: {len(rest)} Variable(s) matched none of {filters!r}:\n"
            f"{shown}{more}\nAdd a filter for them, or `...` as the last filter to take the rest."
        )
    # A standalone Variable is a single leaf at path (): it is returned as is, unwrapped.
    return [b[0][1] if b and b[0][0] == () else State.from_flat_path(b) for b in buckets]


def split(node: Any, *filters: Any) -> tuple[Any, ...]:
    """Split ``node`` into a GraphDef and one State per filter (all of it without filters).

    Filters must together match every Variable; each Variable goes to the first that matches.

    Args:
      node: a Module, another graph node, a Variable, or a pytree holding them.
      *filters: filters (types, strings, ``...``, callables, ``nnx.All``...).
    """
    graphdef, pairs = _flat_leaves(node)
    states = _partition(pairs, filters or (...,), exhaustive=True)
    return (graphdef, *states)


def state(node: Any, *filters: Any) -> Any:
    """The State of ``node``: all of it, or one State per filter (unmatched Variables dropped)."""
    _, pairs = _flat_leaves(node)
    states = _partition(pairs, filters or (...,), exhaustive=False)
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
        shown = ", ".join("/".join(map(str, p)) or "<root>" for p in missing[:10])
        raise ValueError(
            f"merge: the States are missing {len(missing)} Variable(s) that the GraphDef needs: "
            f"{shown}. Pass every State returned by split."
        )
    return Unflattener([flat[p] for p in graphdef.paths]).unflatten(graphdef.root)


def _path_str(path: Path) -> str:
    return "/".join(map(str, path)) or "<root>"


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
            f"update: shape mismatch at '{_path_str(path)}': the model has {old_shape}, the "
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
    entries, treedef = jax.tree_util.tree_flatten_with_path(
        current, is_leaf=lambda x: x is not current
    )
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:
        raise ValueError(
            f"update: '{_path_str(path)}' holds a {type(current).__name__}, not a node; "
            f"cannot write a mapping with keys {sorted(map(str, new))} into it."
        )
    keys = [_key_from_path_entry(e[0]) for e, _ in entries]
    unknown = [k for k in new if k not in keys]
    if unknown:
        raise KeyError(f"update: '{_path_str((*path, unknown[0]))}' does not exist in the model.")
    children = [
        _update_value(child, new[k], (*path, k)) if k in new else child
        for k, (_, child) in zip(keys, entries, strict=True)
    ]
    return treedef.unflatten(children)


def _update_node(node: GraphNode, mapping: Mapping, path: Path) -> None:
    from nnx.tracing import check_same_trace

    items = dict(node._graph_items())
    for key, new in mapping.items():
        if isinstance(key, str) and key not in items and key.isdigit() and int(key) in items:
            key = int(key)  # a list index that became a string in a JSON round trip
        child_path = (*path, key)
        if key not in items:
            if _has_raw_leaf(new) or isinstance(new, Mapping):
                raise KeyError(
                    f"update: '{_path_str(child_path)}' does not exist in "
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
    from nnx.object import Object

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
    states = _partition(pairs, filters, exhaustive=False)
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
    from nnx.object import Object

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
    elif isinstance(value, list | tuple | dict) or _is_container(value):
        for entry, child in jax.tree_util.tree_flatten_with_path(
            value, is_leaf=lambda x: x is not value
        )[0]:
            yield from _iter_graph(child, (*path, _key_from_path_entry(entry[0])), seen)


def _is_container(value: Any) -> bool:
    if isinstance(value, _STATIC_FAST) or callable(value):
        return False
    treedef = jax.tree_util.tree_structure(value, is_leaf=lambda x: x is not value)
    return not (treedef.num_nodes == 1 and treedef.num_leaves == 1)


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
    "is_state_leaf", "map_state", "_sort_key",
]
