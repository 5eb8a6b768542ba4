"""Prefixes: per-argument specs (shardings, axes) spread over the leaves the transforms pass
to JAX, and ``nnx.prefix`` to build them from filters.

A spec for an argument is a prefix of it, as in ``jax.jit``: a ``Sharding``, a
``PartitionSpec`` or None applies to everything below it, a container of specs matches the
argument's containers. Where the argument holds a graph node, the spec may also be a ``State``
(or nested dict) of specs shaped like the node's state, e.g. from ``nnx.get_named_sharding``, a
``StateSharding`` mapping filters to specs, or what ``nnx.prefix`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec, Sharding

from nnx import filterlib
from nnx import graph as graphlib
from nnx._graphdef import NodeDef, PytreeDef, RefDef, VariableDef, child_defs, pytree_children
from nnx._modes import resolve as resolve_mode
from nnx._typing import key_from_path_entry, path_str
from nnx.object import GraphNode
from nnx.statelib import State
from nnx.transforms.lift import Extraction, argument_items, is_node
from nnx.variablelib import Variable


class StateAxes:
    """Per-filter axes for a graph node's state: ``StateAxes({nnx.Param: 0, ...: None})``.

    Each Variable takes the axis of the first filter it matches (``None`` broadcasts,
    ``nnx.Carry`` carries it through ``scan``).
    """

    def __init__(self, filter_axes: Mapping[Any, Any] | Sequence[tuple[Any, Any]]):
        self.by_path: dict[tuple, Any] | None = None
        if isinstance(filter_axes, State):  # axes by path, as nnx.state(model) is shaped
            self.by_path = {tuple(p): v for p, v in filter_axes.flat_state()}
            filter_axes = {}
        items = filter_axes.items() if isinstance(filter_axes, Mapping) else filter_axes
        self.filters = tuple(f for f, _ in items)
        self.axes = tuple(a for _, a in items)
        self.predicates = filterlib.filters_to_predicates(self.filters)

    def axis_for(self, path: tuple, leaf: Any) -> Any:
        if self.by_path is not None:
            value = self.by_path.get(tuple(path))
            return value.get_value() if isinstance(value, Variable) else value
        for pred, axis in zip(self.predicates, self.axes, strict=True):
            if pred(path, leaf):
                return axis
        raise ValueError(
            f"StateAxes{dict(zip(self.filters, self.axes, strict=True))!r} has no filter for "
            f"'{path_str(path)}' ({type(leaf).__name__}); add `...: axis` last."
        )

    map_prefix = axis_for  # Flax's name

    def __repr__(self) -> str:
        if self.by_path is not None:
            return f"StateAxes({self.by_path!r})"
        return f"StateAxes({dict(zip(self.filters, self.axes, strict=True))!r})"


class _CarryType:
    """Marks the carried argument or output of ``nnx.scan``."""

    def __repr__(self) -> str:
        return "Carry"


Carry = _CarryType()


class StateSharding:
    """Specs for a graph node's state by filter: ``StateSharding({nnx.Param: s1, ...: None})``.

    Each Variable takes the spec of the first filter it matches (None when none matches).
    """

    def __init__(self, filter_specs: Mapping[Any, Any]):
        self.filters = tuple(filter_specs)
        self.specs = tuple(filter_specs.values())
        self._predicates = tuple(filterlib.to_predicate(f) for f in self.filters)

    def spec_for(self, path: tuple, leaf: Any) -> Any:
        for pred, spec in zip(self._predicates, self.specs, strict=True):
            if pred(path, leaf):
                return spec
        return None

    def __repr__(self) -> str:
        return f"StateSharding({dict(zip(self.filters, self.specs, strict=True))!r})"


def check_prefix(prefix: Any, name: str, transform: str, mode: Any) -> None:
    """Reject what a transform cannot take as a prefix (shardings, axes, specs) in ``mode``:
    a graph node (in graph mode), a Variable standing for a prefix (a State of specs may hold
    Variables, as ``nnx.get_partition_spec`` returns), and filter mappings such as
    ``StateSharding`` outside graph mode with graph updates."""

    def check(x: Any) -> None:
        if isinstance(x, State):
            return
        if isinstance(x, Variable):
            raise ValueError(
                f"nnx.{transform} {name}: found a {type(x).__name__}; Variables prefixes are "
                "not supported. Give one prefix for the whole Variable (its value's spec)."
            )
        if is_node(x) and mode.graph:
            raise ValueError(
                f"nnx.{transform} {name}: found a {type(x).__name__}. Graph nodes are not "
                "allowed as prefixes; give a State of specs (nnx.get_named_sharding) or an "
                "nnx.StateSharding instead."
            )
        if type(x).__name__ in _PREFIX_MAPPINGS and not mode.full:
            raise ValueError(
                f"nnx.{transform} {name} cannot contain `{type(x).__name__}` objects when "
                "graph=False or graph_updates=False; give plain specs per argument, or use "
                "graph=True, graph_updates=True."
            )

    for x in jax.tree_util.tree_leaves(prefix, is_leaf=_is_prefix_leaf):
        check(x)


_PREFIX_MAPPINGS = ("StateSharding", "StateAxes", "DiffState")


def _is_prefix_leaf(x: Any) -> bool:
    return is_node(x) or isinstance(x, State) or type(x).__name__ in _PREFIX_MAPPINGS


def _is_spec_leaf(s: Any) -> bool:
    return s is None or s is Carry or is_node(s) or isinstance(
        s, int | Sharding | PartitionSpec | StateSharding | StateAxes | State | Variable | PrefixState
    )


def _count_items(tree: Any) -> int:
    return len(jax.tree_util.tree_leaves(tree, is_leaf=is_node))


def broadcast_prefix(spec: Any, tree: Any, where: str) -> list[Any]:
    """One spec per item of ``tree`` (its graph nodes and other pytree leaves, in order)."""
    if isinstance(spec, State | Mapping) and isinstance(tree, State | Mapping) and not is_node(tree):
        # A State (or dict) of specs for a State argument: matched key by key.
        out: list[Any] = []
        for key, child in pytree_children(tree)[0]:
            out.extend(broadcast_prefix(spec.get(key), child, where))
        return out
    if is_node(tree) or _is_spec_leaf(spec):
        return [spec] * _count_items(tree)
    spec_children, spec_def = jax.tree_util.tree_flatten(spec, is_leaf=lambda x: x is not spec)
    tree_children, tree_def = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)
    if spec_def != tree_def:
        raise ValueError(
            f"{where}: the sharding spec {spec!r} does not match the structure of its argument "
            f"({tree_def}); give one spec per argument, or a prefix of its structure."
        )
    out: list[Any] = []
    for s, t in zip(spec_children, tree_children, strict=True):
        out.extend(broadcast_prefix(s, t, where))
    return out


def _unwrap(spec: Any) -> Any:
    return spec.get_value() if isinstance(spec, Variable) else spec


class PrefixState:
    """What ``nnx.prefix`` returns in graph mode: ``state``, a State of prefix values shaped
    like the node's state (paths as ``nnx.state`` gives them)."""

    __slots__ = ("state",)

    def __init__(self, state: State):
        self.state = state

    def __repr__(self) -> str:
        return f"PrefixState({self.state!r})"


def prefix(node: Any, filter_map: Any, /, *, graph: bool | None = None) -> Any:
    """A prefix for ``node`` (axes, shardings) with one value per Variable, chosen by filter.

    ``filter_map`` maps filters to values (each Variable takes the value of the first filter it
    matches; one that matches none raises) or is a callable ``(path, variable) -> value``. In
    tree mode (``graph=False``) the result is a copy of ``node`` holding the values where its
    Variables were; in graph mode a ``PrefixState`` (``.state``: a State of the values). Either
    can be given to the transforms as the prefix of that argument.
    """
    mode = resolve_mode(graph, None)
    choose = _chooser(filter_map)
    if isinstance(node, Variable):  # a single Variable: its value's prefix itself
        return choose((), node)
    if mode.graph:
        # Each graph node in ``node`` (a node, or a pytree holding nodes) becomes a PrefixState.
        def of_node(x: Any) -> Any:
            graphdef, flat = graphlib.flatten(x)
            return PrefixState(State.from_flat_path([
                (p, choose(tuple(p), leaf)) for p, leaf in zip(graphdef.paths, flat, strict=True)
            ]))

        return jax.tree_util.tree_map(lambda x: of_node(x) if is_node(x) else x, node, is_leaf=is_node)
    # Tree mode: the node as a pytree with the values in place of its Variables.
    return jax.tree_util.tree_map_with_path(
        lambda kp, x: choose(tuple(key_from_path_entry(k) for k in kp), x), node,
        is_leaf=lambda x: isinstance(x, Variable),
    )


def _chooser(filter_map: Any) -> Any:
    """``(path, leaf) -> value`` from a filter mapping (first match) or a callable."""
    if callable(filter_map) and not isinstance(filter_map, Mapping):
        return filter_map
    filters = tuple(filter_map)
    predicates = filterlib.filters_to_predicates(filters)
    values = tuple(filter_map.values())

    def choose(path: tuple, leaf: Any) -> Any:
        for pred, value in zip(predicates, values, strict=True):
            if pred(path, leaf):
                return value
        raise ValueError(
            f"nnx.prefix: No filter matched the {type(leaf).__name__} at "
            f"'{path_str(path)}' (filters: {filters!r}); add `...: value` last for the rest."
        )

    return choose


def child(parent: Any, key: Any) -> Any:
    """The child of a graph node or container at ``key`` (None for anything else)."""
    if isinstance(parent, GraphNode):
        return parent._graph_get(key)
    if isinstance(parent, Mapping | list | tuple):
        return parent[key]
    return None


def value_at(node: Any, path: tuple) -> Any:
    """The value at ``path`` in a graph node (or a node-shaped prefix from
    ``nnx.prefix(graph=False)``)."""
    value = node
    for key in path:
        value = child(value, key)
    return value


def node_leaf_specs(spec: Any, paths: Sequence[tuple], leaves: Sequence[Any]) -> list[Any]:
    """The spec of each leaf of one graph node, given the node's spec."""
    if isinstance(spec, PrefixState):
        spec = spec.state
    if isinstance(spec, GraphNode):
        return [_unwrap(value_at(spec, tuple(p))) for p in paths]
    if isinstance(spec, StateSharding):
        return [spec.spec_for(tuple(p), leaf) for p, leaf in zip(paths, leaves, strict=True)]
    if isinstance(spec, StateAxes):
        return [spec.axis_for(tuple(p), leaf) for p, leaf in zip(paths, leaves, strict=True)]
    if isinstance(spec, State | Mapping):
        flat = dict(State.flatten_mapping(spec).items()) if not isinstance(spec, State) else {
            tuple(p): v for p, v in spec.flat_state()
        }
        return [_unwrap(flat.get(tuple(p))) for p in paths]
    return [_unwrap(spec)] * len(paths)


def per_argument(specs: Any, n_args: int, where: str) -> list[Any]:
    """``specs`` as one entry per argument: a tuple/list gives them (missing ones None); any
    other value (a Sharding, a PartitionSpec, None) applies to every argument."""
    if isinstance(specs, tuple | list) and not isinstance(specs, PartitionSpec):
        if len(specs) > n_args:
            raise ValueError(f"{where}: {len(specs)} specs for {n_args} arguments")
        return list(specs) + [None] * (n_args - len(specs))
    return [specs] * n_args


def argument_leaf_specs(
    extraction: Extraction, args: Sequence[Any], specs: Sequence[Any], where: str
) -> tuple[list[Any], list[Any]]:
    """Spread one spec per argument over the extraction's node leaves and ordinary leaves.

    A Variable reachable from several places (two arguments, or twice in one) takes the spec
    of its first place; a later place that gives it another spec raises "Inconsistent
    aliasing", naming both places.
    """
    leaf_specs: list[Any] = [None] * len(extraction.leaves)
    ord_specs: list[Any] = []
    f = extraction.flattener
    leaf_of = {id(leaf): k for k, leaf in enumerate(extraction.leaves)}
    defs_by_index = _defs_by_index(extraction.static.args)
    per_arg = argument_items(extraction, args)
    for i, ((_, items), arg, spec, (_, arg_defs)) in enumerate(
        zip(per_arg, args, specs, extraction.static.args, strict=True)
    ):
        node_defs = iter(d for d in arg_defs if d is not None)
        for (_, leaf_range), s in zip(items, broadcast_prefix(spec, arg, where), strict=True):
            if leaf_range is None:
                ord_specs.append(_unwrap(s))
                continue
            start, stop = leaf_range
            leaf_specs[start:stop] = node_leaf_specs(
                s, extraction.paths[start:stop], extraction.leaves[start:stop]
            )
            for path, k in _references(next(node_defs), (), defs_by_index, set()):
                leaf = f.objects[k]
                again = node_leaf_specs(s, [path], [leaf])[0]
                first = leaf_specs[leaf_of[id(leaf)]]
                if again != first:
                    here = "/".join(map(str, (f"args[{i}]", *path)))
                    raise ValueError(
                        "Inconsistent aliasing detected. The following nodes have different "
                        f"prefixes ({where}): the {type(leaf).__name__} reachable from\n"
                        f"  {f.where(k)}: {first}\n  {here}: {again}\n"
                        "Give it the same spec from every place, or pass distinct Variables."
                    )
    return leaf_specs, ord_specs


def _defs_by_index(static_args: tuple) -> dict[int, Any]:
    """The NodeDef / VariableDef of each object index, over all arguments' definitions."""
    found: dict[int, Any] = {}

    def walk(d: Any) -> None:
        if isinstance(d, NodeDef):
            found[d.index] = d
            for _, c in d.children:
                walk(c)
        elif isinstance(d, VariableDef):
            found[d.index] = d
        elif isinstance(d, PytreeDef):
            for c in d.children:
                walk(c)

    for _, defs in static_args:
        for d in defs:
            if d is not None:
                walk(d)
    return found


def _references(d: Any, path: tuple, defs_by_index: dict, seen: set) -> list[tuple[tuple, int]]:
    """``(path, object index)`` of the Variables that ``d`` reaches through references to
    objects defined elsewhere (a shared Variable or submodule), with their paths in ``d``."""
    if isinstance(d, RefDef):
        target = defs_by_index.get(d.index)
        if isinstance(target, VariableDef):
            return [(path, d.index)]
        if target is None or d.index in seen:
            return []
        return _variables_of(target, path, defs_by_index, seen | {d.index})
    return [
        found for key, c in child_defs(d)
        for found in _references(c, (*path, key), defs_by_index, seen)
    ]


def _variables_of(d: Any, path: tuple, defs_by_index: dict, seen: set) -> list[tuple[tuple, int]]:
    """Every Variable reachable from ``d`` (its own and referenced ones), with paths."""
    if isinstance(d, VariableDef):
        return [(path, d.index)]
    if isinstance(d, RefDef):
        return _references(d, path, defs_by_index, seen)
    return [
        found for key, c in child_defs(d)
        for found in _variables_of(c, (*path, key), defs_by_index, seen)
    ]


class StateSpecs:
    """The input spec of each state leaf of a transform's arguments, applied inside the
    transform to the state it returns (``collect``'s ``constrain``), so that updated state
    leaves with the sharding it came in with: by input leaf index, or by argument and path
    when the structure changed."""

    def __init__(self, leaf_specs: Sequence[Any], leaf_args: Sequence[int], paths: Sequence[tuple]):
        self.by_index = list(leaf_specs)
        self.by_path = {
            (a, tuple(p)): s for a, p, s in zip(leaf_args, paths, leaf_specs, strict=True)
            if s is not None
        }

    def input(self, i: int, value: Any) -> Any:
        return _constrain(value, self.by_index[i]) if i < len(self.by_index) else value

    def path(self, arg: int, path: tuple, value: Any) -> Any:
        return _constrain(value, self.by_path.get((arg, tuple(path))))


def _constrain(value: Any, spec: Any) -> Any:
    if spec is None or not hasattr(value, "shape"):
        return value
    return jax.lax.with_sharding_constraint(value, spec)


def output_value_specs(out: Any, spec: Any, where: str) -> dict[int, Any]:
    """Map ``id`` of each array in ``out`` (a Variable's value for graph nodes) to its spec."""
    found: dict[int, Any] = {}
    items = jax.tree_util.tree_leaves(out, is_leaf=is_node)
    for item, s in zip(items, broadcast_prefix(spec, out, where), strict=True):
        if not is_node(item):
            found.setdefault(id(item), _unwrap(s))
            continue
        extraction = Extraction([item])
        for leaf_spec, value in zip(
            node_leaf_specs(s, extraction.paths, extraction.leaves), extraction.leaf_values(),
            strict=True,
        ):
            found.setdefault(id(value), leaf_spec)
    return found


__all__ = ["Carry", "PrefixState", "StateAxes", "StateSharding", "prefix"]
