"""Carry graph nodes across a JAX transform and write what happened inside back to the caller.

Every nnx transform follows the same four steps:

1. ``extract``: outside, the graph nodes (Modules, Variables, Rngs...) found in the arguments are
   flattened with one shared reference table into static definitions plus a flat list of leaves
   (Variables and raw arrays); the other pytree leaves of the arguments stay as they are.
2. ``rebuild``: inside the trace, fresh objects are built from the definitions and the (traced)
   leaf values, so the user function sees ordinary objects it may mutate.
3. ``collect``: after the call, those objects and any nodes in the outputs are flattened again;
   the new leaf values are returned as arrays and the new structure as static data.
4. ``apply``: outside, the leaf values are written into the caller's own objects (their
   identity kept), the structure is updated if it changed, and output nodes are rebuilt
   (an input returned as output comes back as the same object).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from nnx import _structure as structure
from nnx._graphdef import Flattener, Unflattener, leaf_sources
from nnx._modes import DEFAULT as DEFAULT_MODE
from nnx._modes import Mode
from nnx._tracing import CapturedNodeError, TraceContextError, current_trace
from nnx._typing import path_str
from nnx.object import GraphNode
from nnx.variablelib import Variable

NODE_TYPES = (GraphNode, Variable)
_set_raw = Variable._raw_value.__set__  # type: ignore[attr-defined]


def is_node(x: Any) -> bool:
    return isinstance(x, NODE_TYPES)


class StaticBox:
    """A pytree with no children whose aux data is a static value: lets a traced function
    return trace-time information (new structure) through ``jax.jit`` and friends."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


jax.tree_util.register_pytree_node(
    StaticBox, lambda b: ((), b.value), lambda aux, _: StaticBox(aux)
)


class CallInfo(NamedTuple):
    """What ``collect`` learns inside the trace about the call's graph nodes (static data).

    Attributes:
      in_defs: per argument, the definitions of its nodes after the call.
      out_treedef: the treedef of the output, with graph nodes as leaves.
      out_defs: per output item, the definition of a graph node or None.
      pre_of_post: per object of the walk after the call, its index before the call (or None
        for an object created inside).
      changed: whether any argument node's structure changed.
      has_out_nodes: whether the output holds graph nodes.
      updated: with the structure unchanged, the indices of the input leaves that are returned
        (None when every leaf is returned).
    """

    in_defs: tuple
    out_treedef: Any
    out_defs: tuple
    pre_of_post: tuple
    changed: bool
    has_out_nodes: bool
    updated: tuple[int, ...] | None


class ArgsDef(NamedTuple):
    """The hashable description of a transform's arguments (a cache and trace key): per
    argument ``(treedef, defs)`` (``treedef`` None for a graph node given directly), and the
    mode the transform runs in."""

    args: tuple
    mode: Mode


class Extraction:
    """The graph nodes of a sequence of arguments, flattened with one reference table.

    Attributes:
      static: hashable description of the arguments' structure and the mode (``ArgsDef``).
      leaves: Variables and raw arrays, in order (``leaf_args[i]`` is the argument index).
      ordinary: the non-node pytree leaves of the arguments, in order.
      flattener: the Flattener (its ``objects`` map indices to the caller's objects).

    In tree mode (``mode.graph`` False) nothing is shared: a Variable found twice raises.
    """

    __slots__ = (
        "static", "leaves", "leaf_args", "ordinary", "ordinary_args", "flattener", "node_ranges",
    )

    def __init__(self, args: Sequence[Any], mode: Mode = DEFAULT_MODE):
        f = Flattener(tree=not mode.graph)
        static, ordinary, ordinary_args, leaf_args = [], [], [], []
        node_ranges: list[tuple[int, int]] = []  # leaf range of each node occurrence, in order
        for i, arg in enumerate(args):
            f.label = f"args[{i}]"
            if is_node(arg):
                n = len(f.leaves)
                static.append((None, (f.flatten(arg),)))
                leaf_args.extend([i] * (len(f.leaves) - n))
                node_ranges.append((n, len(f.leaves)))
                continue
            flat, treedef = jax.tree_util.tree_flatten(arg, is_leaf=is_node)
            defs = []
            for x in flat:
                if is_node(x):
                    n = len(f.leaves)
                    defs.append(f.flatten(x))
                    leaf_args.extend([i] * (len(f.leaves) - n))
                    node_ranges.append((n, len(f.leaves)))
                else:
                    defs.append(None)
                    ordinary.append(x)
                    ordinary_args.append(i)
            static.append((treedef, tuple(defs)))
        self.static = ArgsDef(tuple(static), mode)
        self.leaves = f.leaves
        self.leaf_args = leaf_args
        self.ordinary = ordinary
        self.ordinary_args = ordinary_args
        self.flattener = f
        self.node_ranges = node_ranges

    @property
    def paths(self) -> list[tuple]:
        return self.flattener.paths

    @property
    def cacheable(self) -> bool:
        """Whether every change to these arguments' structure bumps the structure version (see
        ``Flattener.cacheable``), so a cache keyed on it stays fresh."""
        return self.flattener.cacheable

    def leaf_values(self) -> list[Any]:
        """The raw values of the leaves (a Variable's value, or the array itself)."""
        return [x._raw_value if isinstance(x, Variable) else x for x in self.leaves]


def rebuild(
    static: ArgsDef, leaf_values: Sequence[Any], ordinary: Sequence[Any]
) -> tuple[list[Any], Unflattener, list[Any]]:
    """Inside a trace: build fresh objects from the definitions and leaf values.

    Returns the arguments, the Unflattener (whose ``objects`` map indices to the new objects)
    and the list of top-level inner nodes per argument position (for ``collect``).
    """
    u = Unflattener(list(leaf_values))
    it = iter(ordinary)
    args, inner_nodes = [], []
    for treedef, defs in static.args:
        if treedef is None:
            node = u.unflatten(defs[0])
            args.append(node)
            inner_nodes.append([node])
            continue
        items, nodes = [], []
        for d in defs:
            if d is None:
                items.append(next(it))
            else:
                node = u.unflatten(d)
                items.append(node)
                nodes.append(node)
        args.append(treedef.unflatten(items))
        inner_nodes.append(nodes)
    return args, u, inner_nodes


def rebuild_around_variables(
    extraction: Extraction, leaf_values: Sequence[Any], ordinary: Sequence[Any]
) -> list[Any]:
    """Outside the trace, without graph updates: the arguments as new graph nodes that hold
    the caller's own Variables (already updated) and ``leaf_values`` for their other array
    attributes; a Variable argument is itself. What a carry comes back as in that mode, since
    the caller's nodes keep their attributes."""
    leaves = [
        leaf if isinstance(leaf, Variable) else value
        for leaf, value in zip(extraction.leaves, leaf_values, strict=True)
    ]
    return rebuild(extraction.static, leaves, ordinary)[0]


def creation_trace(obj: Any) -> Any:
    return obj._trace if isinstance(obj, Variable) else obj._graph_trace()


def foreign_write_error(obj: Any, path: tuple) -> TraceContextError:
    where = path_str(path)
    return TraceContextError(
        f"Cannot update {type(obj).__name__} at '{where}' from a different trace level: it was "
        "created outside the JAX transform that is running now (it was captured by a closure, "
        "e.g. a Module used inside jax.jit without being its argument), and writing the "
        "transform's results into it would leave a tracer behind. Pass it to the transform as "
        "an argument (use nnx.jit instead of jax.jit), or keep it unchanged inside."
    )


def check_write_back(
    flattener: Flattener, changed: bool, new_values: Sequence[Any], trace: Any = None
) -> None:
    """Raise TraceContextError, naming the path, if writing a transform's results would change
    an object that belongs to another trace than the current one; nothing is written then.

    With ``changed`` (the structure changed) every object of the walk is rewritten; otherwise
    only the leaves whose value is a new object.
    """
    if trace is None:
        trace = current_trace()
    if changed:
        for obj, path in zip(flattener.objects, flattener.object_paths, strict=True):
            if creation_trace(obj) != trace:
                raise foreign_write_error(obj, path)
        return
    for leaf, holder, path, new in zip(
        flattener.leaves, flattener.holders, flattener.paths, new_values, strict=False
    ):
        old = leaf._raw_value if isinstance(leaf, Variable) else leaf
        if new is not old and holder is not None and creation_trace(holder) != trace:
            raise foreign_write_error(holder, path)


class Collected:
    """What ``collect`` returns: new leaf values plus static information (in ``box``)."""

    __slots__ = ("leaf_values", "out_ordinary", "box")

    def __init__(self, leaf_values: list[Any], out_ordinary: list[Any], box: StaticBox):
        self.leaf_values = leaf_values
        self.out_ordinary = out_ordinary
        self.box = box


def collect(
    static: ArgsDef,
    inner_nodes: list[list[Any]],
    u: Unflattener,
    out: Any,
    input_values: Sequence[Any] | None = None,
    always_return: Sequence[bool] | None = None,
    keep_all: bool = False,
    constrain: Any = None,
) -> tuple[list[Any], list[Any], StaticBox]:
    """Inside a trace, after the call: flatten the argument nodes again, then the outputs.

    Returns the new leaf values, the ordinary output leaves, and a StaticBox holding a
    ``CallInfo``.
    When the structure is unchanged and ``input_values`` is given, only the input leaves whose
    value was replaced (or that ``always_return`` marks, e.g. donated ones) are returned, their
    indices in ``updated``, followed by the leaves of new nodes in the outputs; returning
    untouched arrays would make XLA copy them. Otherwise ``updated`` is None and all leaves are
    returned. ``keep_all`` returns every leaf even then (for transforms whose outputs are fixed
    in advance); ``updated`` still names the replaced ones. ``constrain`` (``input(i, value)``
    and ``path(arg, path, value)``) may replace each returned state value, e.g. to keep the
    argument's sharding.

    With ``graph_updates=False`` (and in tree mode) the arguments' structure is not carried out:
    see ``_collect_values``.
    """
    if not static.mode.updates:
        return _collect_values(static, u, out, input_values, always_return, keep_all, constrain)
    g = Flattener()
    in_defs, arg_ranges = [], []
    for nodes in inner_nodes:
        start = len(g.leaves)
        in_defs.append(tuple(g.flatten(n) for n in nodes))
        arg_ranges.append((start, len(g.leaves)))
    in_defs = tuple(in_defs)
    changed = in_defs != _input_defs(static)
    flat_out, out_treedef = jax.tree_util.tree_flatten(out, is_leaf=is_node)
    out_defs, out_ordinary = [], []
    n_in_objects = len(g.objects)
    for x in flat_out:
        if is_node(x):
            out_defs.append(g.flatten(x))
        else:
            out_defs.append(None)
            out_ordinary.append(x)
    pre_index = {id(obj): i for i, obj in u.objects.items()}
    pre_of_post = tuple(pre_index.get(id(obj)) for obj in g.objects)
    # The same definitions with objects moved (two submodules swapped) is a change too.
    changed = changed or pre_of_post[:n_in_objects] != tuple(range(n_in_objects))
    trace = current_trace()
    for k, obj in enumerate(g.objects):
        if pre_of_post[k] is None and creation_trace(obj) != trace:
            where = "returned from" if k >= n_in_objects else "attached inside"
            raise CapturedNodeError(
                f"Cannot extract graph node from different trace level: a {type(obj).__name__} "
                f"captured from outside the transform was {where} it. Pass it as an argument "
                "to the transform instead, so it is carried through."
            )
    values = [x._raw_value if isinstance(x, Variable) else x for x in g.leaves]
    has_out_nodes = any(d is not None for d in out_defs)
    updated = None
    if not changed and input_values is not None:
        values, updated = _returned_inputs(values, input_values, always_return, keep_all, constrain)
    elif constrain is not None:
        for arg, (start, stop) in enumerate(arg_ranges):
            for k in range(start, stop):
                values[k] = constrain.path(arg, g.paths[k], values[k])
    box = StaticBox(
        CallInfo(in_defs, out_treedef, tuple(out_defs), pre_of_post, changed, has_out_nodes, updated)
    )
    return values, out_ordinary, box


def _returned_inputs(
    values: list[Any], input_values: Sequence[Any], always_return: Sequence[bool] | None,
    keep_all: bool, constrain: Any,
) -> tuple[list[Any], tuple[int, ...]]:
    """Which input leaves a call returns (those replaced, or marked ``always_return``) and the
    values to return: only those (followed by any further ones), or all with ``keep_all``."""
    n_in = len(input_values)
    updated = tuple(
        i for i in range(n_in)
        if values[i] is not input_values[i] or (always_return and always_return[i])
    )
    if constrain is not None:
        for i in updated:
            values[i] = constrain.input(i, values[i])
    if not keep_all:
        values = [values[i] for i in updated] + values[n_in:]
    return values, updated


def _input_defs(static: ArgsDef) -> tuple:
    """Per argument, the definitions of its graph nodes (what ``collect`` compares against)."""
    return tuple(
        defs if treedef is None else tuple(d for d in defs if d is not None)
        for treedef, defs in static.args
    )


def _collect_values(
    static: ArgsDef, u: Unflattener, out: Any, input_values: Sequence[Any] | None,
    always_return: Sequence[bool] | None, keep_all: bool, constrain: Any = None,
) -> tuple[list[Any], list[Any], StaticBox]:
    """``collect`` for ``graph_updates=False`` and tree mode. The argument structure is taken as
    unchanged; each input Variable's value is read from the object built from it (a Variable
    replaced inside is not followed), raw array leaves keep their input value, and output nodes
    are flattened apart from the inputs: they come out as new objects. In tree mode an input
    Variable in the outputs, or any Variable twice, raises."""
    in_defs = _input_defs(static)
    values = [
        u.leaves[k] if index is None else u.objects[index]._raw_value
        for k, index in enumerate(i for defs in in_defs for d in defs for i in leaf_sources(d))
    ]
    g = Flattener(tree=not static.mode.graph)
    g.label = "output"
    flat_out, out_treedef = jax.tree_util.tree_flatten(out, is_leaf=is_node)
    out_defs, out_ordinary = [], []
    for x in flat_out:
        if is_node(x):
            out_defs.append(g.flatten(x))
        else:
            out_defs.append(None)
            out_ordinary.append(x)
    inputs = {id(obj) for obj in u.objects.values()}
    trace = current_trace()
    for k, obj in enumerate(g.objects):
        if id(obj) in inputs:
            if isinstance(obj, Variable):
                raise ValueError(
                    f"Duplicate {type(obj).__name__} found at paths: an input of the transform "
                    f"is returned at '{g.where(k)}'. graph_updates=False (or tree mode) does not "
                    "support Variable aliasing (an input Variable returned as an output); "
                    "return its value, or a copy (nnx.clone), or use graph=True, "
                    "graph_updates=True."
                )
        elif creation_trace(obj) != trace:
            raise CapturedNodeError(
                f"Cannot return captured Variable or graph node ({type(obj).__name__} at "
                f"'{g.where(k)}'): it was created outside the transform. Pass it as an "
                "argument to the transform instead."
            )
    updated = None
    if input_values is not None:
        values, updated = _returned_inputs(values, input_values, always_return, keep_all, constrain)
    values += [x._raw_value if isinstance(x, Variable) else x for x in g.leaves]
    has_out_nodes = any(d is not None for d in out_defs)
    info = CallInfo(in_defs, out_treedef, tuple(out_defs), (), False, has_out_nodes, updated)
    return values, out_ordinary, StaticBox(info)


def collect_values_only(
    static: tuple, inner_nodes: list[list[Any]], u: Unflattener, out: Any, where: str,
    input_values: Sequence[Any] | None = None,
) -> tuple[list[Any], Any, StaticBox]:
    """``collect`` for transforms that can carry only new Variable values (no structure change,
    no graph nodes in the outputs): returns all leaf values, the output pytree and the box.
    With ``input_values``, the box's ``updated`` names the leaves whose value was replaced."""
    values, out_ordinary, box = collect(
        static, inner_nodes, u, out, input_values, keep_all=input_values is not None
    )
    info: CallInfo = box.value
    if info.changed or info.has_out_nodes:
        raise TraceContextError(
            f"{where}: the function changed the structure of its graph-node arguments or "
            "returned graph nodes; only Variable values may change inside it."
        )
    return values, info.out_treedef.unflatten(out_ordinary), box


def argument_items(
    extraction: Extraction, args: Sequence[Any]
) -> list[tuple[Any, list[tuple[Any, tuple[int, int] | None]]]]:
    """Per argument of ``extraction``: its treedef (graph nodes as leaves) and its items, each
    paired with the range of its leaves in ``extraction.leaves`` (None for a non-node leaf)."""
    ranges = iter(extraction.node_ranges)
    result = []
    for arg in args:
        items, treedef = jax.tree_util.tree_flatten(arg, is_leaf=is_node)
        result.append((treedef, [(x, next(ranges) if is_node(x) else None) for x in items]))
    return result


def keep_unchanged(
    info: CallInfo, values: Sequence[Any], input_values: Sequence[Any]
) -> list[Any]:
    """For a call collected with ``keep_all``: the input values where the function left a leaf
    unchanged, so that writing back does not replace (and re-place) the caller's arrays."""
    full = list(input_values)
    for i in info.updated:
        full[i] = values[i]
    return full


def full_leaf_values(
    box: StaticBox, values: Sequence[Any], input_values: Sequence[Any]
) -> list[Any]:
    """All leaf values after a call, given what ``collect`` returned and the inputs."""
    updated = box.value.updated
    if updated is None:
        return list(values)
    full = list(input_values)
    for i, v in zip(updated, values, strict=False):
        full[i] = v
    return full + list(values[len(updated):])


def apply(
    extraction: Extraction, box: StaticBox, leaf_values: Sequence[Any], out_ordinary: Sequence[Any]
) -> Any:
    """Outside, after the transform: write the results into the caller's objects; return the
    outputs with output nodes rebuilt (inputs returned as outputs keep their identity)."""
    info: CallInfo = box.value
    if not extraction.static.mode.updates:
        return _apply_values(extraction, info, leaf_values, out_ordinary)
    check_write_back(extraction.flattener, info.changed, leaf_values)
    outer = extraction.flattener.objects
    existing = {k: outer[j] for k, j in enumerate(info.pre_of_post) if j is not None}
    u = Unflattener(list(leaf_values), existing)
    if info.changed:
        structure.bump()
    for defs in info.in_defs:
        for d in defs:
            u.unflatten(d)
    it = iter(out_ordinary)
    items = [next(it) if d is None else u.unflatten(d) for d in info.out_defs]
    return info.out_treedef.unflatten(items)


def _apply_values(
    extraction: Extraction, info: CallInfo, leaf_values: Sequence[Any], out_ordinary: Sequence[Any]
) -> Any:
    """``apply`` for ``graph_updates=False`` and tree mode: new values into the input Variables,
    output nodes built as new objects."""
    n_in = len(extraction.leaves)
    inputs = leaf_values[:n_in]
    check_write_back(extraction.flattener, False, inputs)
    for leaf, value in zip(extraction.leaves, inputs, strict=True):
        if isinstance(leaf, Variable) and value is not leaf._raw_value:
            _set_raw(leaf, value)
    u = Unflattener(list(leaf_values[n_in:]))
    it = iter(out_ordinary)
    items = [next(it) if d is None else u.unflatten(d) for d in info.out_defs]
    return info.out_treedef.unflatten(items)


def write_back_fast(extraction: Extraction, leaf_values: Sequence[Any]) -> bool:
    """Write new values into the leaves' owners when the structure did not change.

    Returns False (writing nothing) when some leaf has no direct owner (an array nested in a
    tuple), in which case the caller uses ``apply``.
    """
    owners = extraction.flattener.owners
    if any(o is None for o in owners):
        return False
    check_write_back(extraction.flattener, False, leaf_values)
    for owner, value in zip(owners, leaf_values, strict=True):
        if isinstance(owner, Variable):
            _set_raw(owner, value)
        else:
            owner[0]._graph_set(owner[1], value)
    return True


def reject_bound_method(fun: Any, name: str) -> Any:
    """``fun`` itself; a method bound to a graph node or Variable raises: its object would be
    captured instead of carried (the transform could neither see nor update it)."""
    owner = getattr(fun, "__self__", None)
    if owner is not None and is_node(owner):
        raise ValueError(
            f"nnx.{name} does not support bound methods such as "
            f"{type(owner).__name__}.{getattr(fun, '__name__', '?')}: the object would be "
            f"captured instead of carried. Use @nnx.{name} on the method in the class body, or "
            f"nnx.{name}({type(owner).__name__}.{getattr(fun, '__name__', 'method')})(obj, ...)."
        )
    return fun


def resolve_kwargs(f: Any, args: tuple, kwargs: dict, name: str) -> tuple:
    """``args`` with ``kwargs`` bound to ``f``'s positional parameters, for transforms whose
    axes are given per positional argument (vmap, pmap, scan); keyword-only ones raise."""
    if not kwargs:
        return args
    try:
        bound = inspect.signature(f).bind(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise TypeError(f"nnx.{name}: cannot bind the arguments of {f!r}: {e}") from None
    if bound.kwargs:
        raise TypeError(
            f"nnx.{name}: keyword-only arguments {sorted(bound.kwargs)} cannot be mapped; "
            "pass them positionally (in_axes are per positional argument)."
        )
    return tuple(bound.args)


def lifted_call(
    transform: Any, f: Any, args: Sequence[Any], kwargs: dict[str, Any], *, elide: bool = True,
    mode: Mode = DEFAULT_MODE,
) -> Any:
    """Run ``f(*args, **kwargs)`` under ``transform(pure)`` (e.g. ``jax.checkpoint``), where
    ``pure`` maps leaf values to results, and write the results back to the caller's objects."""
    extraction = Extraction([*args, kwargs], mode)
    values = extraction.leaf_values()
    static = extraction.static

    def pure(vals: list, ords: list) -> tuple:
        a, u, inner = rebuild(static, vals, ords)
        *pos, kw = a
        return collect(static, inner, u, f(*pos, **kw), vals if elide else None)

    new_vals, out_ord, box = transform(pure)(values, extraction.ordinary)
    return apply(extraction, box, full_leaf_values(box, new_vals, values), out_ord)
