"""``nnx.vmap``, ``nnx.pmap``, ``nnx.scan`` (with ``StateAxes`` and ``Carry``), ``split_rngs``,
``fori_loop`` and ``while_loop``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnx import filterlib
from nnx._graphdef import Flattener, count_leaves
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx._typing import path_str
from nnx.graph import iter_graph
from nnx.rnglib import RngStream
from nnx.transforms import prefixes
from nnx.transforms.lift import (
    CallInfo,
    Extraction,
    StaticBox,
    _input_defs,
    apply,
    collect,
    is_node,
    keep_unchanged,
    rebuild,
    reject_bound_method,
)
from nnx.transforms.programs import ProgramCache
from nnx.variablelib import Variable


class StateAxes:
    """Per-filter axes for a graph node's state: ``StateAxes({nnx.Param: 0, ...: None})``.

    Each Variable takes the axis of the first filter it matches (``None`` broadcasts,
    ``nnx.Carry`` carries it through ``scan``).
    """

    def __init__(self, filter_axes: Mapping[Any, Any] | Sequence[tuple[Any, Any]]):
        items = filter_axes.items() if isinstance(filter_axes, Mapping) else filter_axes
        self.filters = tuple(f for f, _ in items)
        self.axes = tuple(a for _, a in items)
        self.predicates = filterlib.filters_to_predicates(self.filters)

    def axis_for(self, path: tuple, leaf: Any) -> Any:
        for pred, axis in zip(self.predicates, self.axes, strict=True):
            if pred(path, leaf):
                return axis
        raise ValueError(
            f"StateAxes{dict(zip(self.filters, self.axes, strict=True))!r} has no filter for "
            f"'{path_str(path)}' ({type(leaf).__name__}); add `...: axis` last."
        )

    def __repr__(self) -> str:
        return f"StateAxes({dict(zip(self.filters, self.axes, strict=True))!r})"


class _CarryType:
    """Marks the carried argument or output of ``nnx.scan``."""

    def __repr__(self) -> str:
        return "Carry"


Carry = _CarryType()


class _Leaves:
    """A node's leaf values inside a transform's argument or output tree (a pytree)."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]):
        self.values = values


jax.tree_util.register_pytree_node(
    _Leaves, lambda x: (x.values, None), lambda _, values: _Leaves(list(values))
)


def _is_leaves(x: Any) -> bool:
    return isinstance(x, _Leaves)


def _per_arg(axes: Any, n: int, name: str) -> list[Any]:
    if isinstance(axes, list | tuple) and not isinstance(axes, StateAxes):
        if len(axes) != n:
            raise ValueError(f"{name} has {len(axes)} entries but the function got {n} arguments")
        return list(axes)
    return [axes] * n


def _leaf_axes(extraction: Extraction, arg_axes: list[Any]) -> list[Any]:
    """The axis of every leaf, from its argument's axis (an int, None or StateAxes)."""
    out = []
    for j, a in enumerate(extraction.leaf_args):
        axis = arg_axes[a] if a < len(arg_axes) else None
        if isinstance(axis, StateAxes):
            axis = axis.axis_for(extraction.paths[j], extraction.leaves[j])
        out.append(axis)
    return out


def _replace_nodes(arg: Any, ranges: Any, for_node: Any, for_other: Any) -> Any:
    """``arg`` with each node occurrence replaced by ``for_node(start, end)`` of its leaf range
    (consumed from ``ranges``) and every other pytree leaf by ``for_other(leaf)``."""
    if is_node(arg):
        return for_node(*next(ranges))
    flat, treedef = jax.tree_util.tree_flatten(arg, is_leaf=is_node)
    return treedef.unflatten(
        [for_node(*next(ranges)) if is_node(x) else for_other(x) for x in flat]
    )


def _structured_args(extraction: Extraction, args: Sequence[Any], values: list[Any]) -> list:
    """The arguments with every node occurrence replaced by ``_Leaves`` of its leaf values."""
    ranges = iter(extraction.node_ranges)
    return [
        _replace_nodes(arg, ranges, lambda s, e: _Leaves(values[s:e]), lambda x: x)
        for arg in args
    ]


def _structured_axes(extraction: Extraction, args: Sequence[Any], arg_axes: list[Any]) -> list:
    """in_axes matching ``_structured_args``: StateAxes become per-leaf lists."""
    leaf_axes = _leaf_axes(extraction, arg_axes)
    ranges = iter(extraction.node_ranges)
    out = []
    for arg, axis in zip(args, arg_axes, strict=True):
        per_leaf = _replace_nodes(arg, ranges, lambda s, e: _Leaves(leaf_axes[s:e]), lambda x: None)
        # A plain axis is a prefix for the whole argument, nodes included.
        out.append(per_leaf if isinstance(axis, StateAxes) else axis)
    return out


def _flat_values(structured: Any) -> tuple[list[Any], list[Any]]:
    """Leaf values (from ``_Leaves``) and ordinary leaves of a structured argument tree."""
    leaf_values, ordinary = [], []
    for x in jax.tree_util.tree_leaves(structured, is_leaf=_is_leaves):
        if isinstance(x, _Leaves):
            leaf_values.extend(x.values)
        else:
            ordinary.append(x)
    return leaf_values, ordinary


def _out_structured(box: StaticBox, values: list[Any], out_ordinary: list[Any], n_in: int) -> Any:
    """The user's output tree with output nodes replaced by ``_Leaves`` of their leaves."""
    info = box.value
    pos = n_in
    ords = iter(out_ordinary)
    items = []
    for d in info.out_defs:
        if d is None:
            items.append(next(ords))
        else:
            n = count_leaves(d)
            items.append(_Leaves(values[pos:pos + n]))
            pos += n
    return info.out_treedef.unflatten(items)


def _mapped_pure(
    f: Callable[..., Any], static: tuple, leaf_args: tuple[int, ...],
    state_axes_args: tuple[int, ...], name: str,
) -> Callable[..., tuple]:
    """The pure function ``_vmap_like`` maps: structured leaf values in, per-argument leaf
    groups, the structured output and the call's ``StaticBox`` out. Closes over structure only."""

    def pure(*structured: Any) -> tuple:
        vals, ords = _flat_values(list(structured))
        a, u, inner = rebuild(static, vals, ords)
        new_vals, out_ord, box = collect(static, inner, u, f(*a), vals, keep_all=True)
        counts = [sum(count_leaves(d) for d in defs) for defs in box.value.in_defs]
        if box.value.changed and any(
            counts[i] != sum(1 for a in leaf_args if a == i) for i in state_axes_args
        ):
            raise ValueError(
                f"{name}: the function changed the structure of an argument mapped with "
                "StateAxes (added or removed Variables); use a single axis for it instead."
            )
        groups, pos = [], 0
        for n in counts:
            groups.append(_Leaves(new_vals[pos:pos + n]))
            pos += n
        return tuple(groups), _out_structured(box, new_vals, out_ord, pos), box

    return pure


def _vmap_like(
    jax_transform: Callable[..., Any], f: Callable[..., Any], in_axes: Any, out_axes: Any,
    name: str, mode: Mode, programs: ProgramCache | None = None, **transform_kwargs: Any,
) -> Callable[..., Any]:
    """The shared body of ``vmap`` and ``pmap``. With ``programs``, the mapped function is kept
    per argument structure and axes, so JAX traces (and compiles) it once per signature."""
    reject_bound_method(f, name)
    prefixes.check_prefix(in_axes, "in_axes", name, mode)
    prefixes.check_prefix(out_axes, "out_axes", name, mode)

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        extraction = Extraction(list(args), mode)
        values = extraction.leaf_values()
        arg_axes = _per_arg(in_axes, len(args), "in_axes")
        in_leaf_axes = _leaf_axes(extraction, arg_axes)
        leaf_args = tuple(extraction.leaf_args)

        def make() -> Callable[..., Any]:
            state_axes_args = tuple(i for i, ax in enumerate(arg_axes) if isinstance(ax, StateAxes))
            pure = _mapped_pure(f, extraction.static, leaf_args, state_axes_args, name)
            state_out_axes = tuple(
                _Leaves([ax for ax, a in zip(in_leaf_axes, leaf_args, strict=True) if a == i])
                if isinstance(arg_axes[i], StateAxes) else arg_axes[i]
                for i in range(len(args))
            )
            return jax_transform(
                pure, in_axes=tuple(_structured_axes(extraction, args, arg_axes)),
                out_axes=(state_out_axes, out_axes, 0), **transform_kwargs,
            )

        if programs is None:
            mapped = make()
        else:
            key = (extraction.static, tuple(in_leaf_axes), leaf_args, tuple(arg_axes))
            mapped = programs.get(key, make)
        groups, out_struct, box = mapped(*_structured_args(extraction, args, values))
        new_vals = [v for g in groups for v in g.values]
        if box.value.updated is not None:  # keep the caller's arrays where nothing changed
            new_vals = keep_unchanged(box.value, new_vals, values) + new_vals[len(values):]
        out_ord = []
        for x in jax.tree_util.tree_leaves(out_struct, is_leaf=_is_leaves):
            if isinstance(x, _Leaves):
                new_vals.extend(x.values)
            else:
                out_ord.append(x)
        return apply(extraction, box, new_vals, out_ord)

    return wrapper


def vmap(
    f: Callable[..., Any] | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.vmap`` for functions of graph nodes. A Module argument maps all its state along
    its axis (or per filter with ``StateAxes``); Modules may be created and returned (a stack
    of layers); state updates inside are written back. Usable as a decorator, also on
    ``__init__`` and ``__call__``.

    Args:
      f: the function.
      in_axes: an axis (int or None) per argument, a StateAxes for Module arguments, or one
        value for all arguments.
      out_axes: axes of the outputs (a prefix of the output tree; Modules included).
      axis_name, axis_size, spmd_axis_name: as in ``jax.vmap``.
    """
    if f is None:
        return lambda fn: vmap(
            fn, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size,
            spmd_axis_name=spmd_axis_name, graph=graph, graph_updates=graph_updates,
        )
    return _vmap_like(
        jax.vmap, f, in_axes, out_axes, "vmap", resolve_mode(graph, graph_updates),
        axis_name=axis_name, axis_size=axis_size, spmd_axis_name=spmd_axis_name,
    )


def pmap(
    f: Callable[..., Any] | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    devices: Any = None,
    backend: str | None = None,
    static_broadcasted_argnums: tuple[int, ...] = (),
    donate_argnums: tuple[int, ...] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.pmap`` for functions of graph nodes (same conventions as ``nnx.vmap``)."""
    if f is None:
        return lambda fn: pmap(
            fn, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size,
            devices=devices, backend=backend, graph=graph, graph_updates=graph_updates,
        )
    if static_broadcasted_argnums or donate_argnums:
        raise NotImplementedError(
            "nnx.pmap does not take static_broadcasted_argnums or donate_argnums; use nnx.jit "
            "with shardings for those."
        )
    kwargs = dict(axis_name=axis_name, devices=devices, backend=backend)
    if axis_size is not None:
        kwargs["axis_size"] = axis_size
    return _vmap_like(
        jax.pmap, f, in_axes, out_axes, "pmap", resolve_mode(graph, graph_updates),
        ProgramCache(), **kwargs,
    )


# -- scan ------------------------------------------------------------------------------


def _moveaxis(x: Any, src: int, dst: int) -> Any:
    return x if src == dst else jnp.moveaxis(x, src, dst)


def scan(
    f: Callable[..., Any] | None = None,
    *,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.scan`` with vmap-style axes: each argument is the carry (``nnx.Carry``),
    scanned along an axis (an int; Modules: a stack of layers), or broadcast (``None``).

    The output is the carry where ``out_axes`` says ``Carry`` and stacked along the given axis
    elsewhere (``out_axes=nnx.Carry``: the function returns only the carry). State updates of
    scanned Modules (BatchNorm statistics, RNG counters) are stacked back into them; state of
    carried or broadcast Modules is carried.
    """
    if f is None:
        return lambda fn: scan(
            fn, length=length, reverse=reverse, unroll=unroll, in_axes=in_axes,
            out_axes=out_axes, graph=graph, graph_updates=graph_updates,
        )
    reject_bound_method(f, "scan")
    mode = resolve_mode(graph, graph_updates)
    prefixes.check_prefix(in_axes, "in_axes", "scan", mode)
    prefixes.check_prefix(out_axes, "out_axes", "scan", mode)

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        arg_axes = _per_arg(in_axes, len(args), "in_axes")
        if sum(1 for a in arg_axes if a is Carry) > 1:
            raise ValueError("scan: at most one argument may be nnx.Carry")
        extraction = Extraction(list(args), mode)
        values = extraction.leaf_values()
        leaf_axes = _leaf_axes(extraction, [None if a is Carry else a for a in arg_axes])
        carried_leaf = [ax is None or ax is Carry or arg_axes[a] is Carry
                        for ax, a in zip(leaf_axes, extraction.leaf_args, strict=True)]
        ord_axes = []
        for a in extraction.ordinary_args:
            ax = arg_axes[a]
            if isinstance(ax, StateAxes):
                raise ValueError("scan: StateAxes applies to Module arguments only")
            ord_axes.append(ax)
        carry_ord = [j for j, ax in enumerate(ord_axes) if ax is Carry]
        scan_ord = [j for j, ax in enumerate(ord_axes) if isinstance(ax, int)]
        const_ord = [j for j, ax in enumerate(ord_axes) if ax is None]
        carry_leaf = [j for j, c in enumerate(carried_leaf) if c]
        scan_leaf = [j for j, c in enumerate(carried_leaf) if not c]
        static = extraction.static
        ordinary = extraction.ordinary
        single_out = not isinstance(out_axes, tuple)
        out_spec = (out_axes,) if single_out else out_axes
        box_cell: list[StaticBox] = []

        def body(carry: tuple, xs: tuple) -> tuple:
            c_leaf, c_ord = carry
            x_leaf, x_ord = xs
            vals: list[Any] = [None] * len(values)
            for j, v in zip(carry_leaf, c_leaf, strict=True):
                vals[j] = v
            for j, v in zip(scan_leaf, x_leaf, strict=True):
                vals[j] = v
            ords: list[Any] = [None] * len(ordinary)
            for j in const_ord:
                ords[j] = ordinary[j]
            for j, v in zip(carry_ord, c_ord, strict=True):
                ords[j] = v
            for j, v in zip(scan_ord, x_ord, strict=True):
                ords[j] = v
            a, u, inner = rebuild(static, vals, ords)
            out = f(*a)
            outs = (out,) if single_out else out
            if not isinstance(outs, tuple) or len(outs) != len(out_spec):
                raise ValueError(
                    f"scan: out_axes={out_axes!r} expects {len(out_spec)} outputs, the function "
                    f"returned {type(out).__name__}"
                )
            carry_out = [o for o, ax in zip(outs, out_spec, strict=True) if ax is Carry]
            ys = [o for o, ax in zip(outs, out_spec, strict=True) if ax is not Carry]
            new_vals, out_ord, box = collect(static, inner, u, (carry_out, ys))
            if box.value.changed:
                raise ValueError(
                    "scan: the function changed the structure of an argument (added or removed "
                    "attributes or Variables); that cannot be carried across iterations."
                )
            if len(new_vals) > len(values):
                raise ValueError("scan: new graph nodes cannot be returned from a scanned function")
            n_carry = _count_ordinary(carry_out)
            if n_carry != len(carry_ord):
                raise ValueError(
                    "scan: the carry returned by the function does not match the carry argument "
                    f"({n_carry} array leaves returned, {len(carry_ord)} expected)"
                )
            y_axes = [ax for ax in out_spec if ax is not Carry]
            y_leaf_axes = [ax for y, ax in zip(ys, y_axes, strict=True)
                           for _ in range(_count_ordinary(y))]
            box_cell[:] = [(box, y_leaf_axes)]
            new_c = [new_vals[j] for j in carry_leaf]
            new_x = [new_vals[j] for j in scan_leaf]
            return (new_c, out_ord[:n_carry]), (new_x, out_ord[n_carry:])

        x_leaf = [_moveaxis(values[j], leaf_axes[j], 0) for j in scan_leaf]
        x_ord = [_moveaxis(ordinary[j], ord_axes[j], 0) for j in scan_ord]
        init = ([values[j] for j in carry_leaf], [ordinary[j] for j in carry_ord])
        (c_leaf, c_ord), (ys_leaf, ys_ord) = jax.lax.scan(
            body, init, (x_leaf, x_ord), length=length, reverse=reverse, unroll=unroll
        )
        box, y_leaf_axes = box_cell[0]
        new_vals = list(values)
        for j, v in zip(carry_leaf, c_leaf, strict=True):
            new_vals[j] = v
        for j, v in zip(scan_leaf, ys_leaf, strict=True):
            new_vals[j] = _moveaxis(v, 0, leaf_axes[j])
        ys = [_moveaxis(y, 0, ax) for y, ax in zip(ys_ord, y_leaf_axes, strict=True)]
        carry_out, ys_out = apply(extraction, box, new_vals, list(c_ord) + ys)
        outs = []
        carry_it, ys_it = iter(carry_out), iter(ys_out)
        for ax in out_spec:
            outs.append(next(carry_it) if ax is Carry else next(ys_it))
        return outs[0] if single_out else tuple(outs)

    return wrapper


def _count_ordinary(tree: Any) -> int:
    return sum(1 for x in jax.tree_util.tree_leaves(tree, is_leaf=is_node) if not is_node(x))


# -- split_rngs ------------------------------------------------------------------------


def split_rngs(
    f: Callable[..., Any] | None = None,
    *,
    splits: int | tuple[int, ...],
    only: Any = ...,
    squeeze: bool = False,
    graph: bool | None = None,
) -> Any:
    """Give every RNG stream in the arguments ``splits`` keys (a leading axis) for the call,
    so ``vmap``/``scan`` hand each layer its own keys; the streams are restored afterwards
    except for their advanced counters.

    Args:
      f: the function (or use as a decorator).
      splits: number of keys (or a shape).
      only: a filter on the streams to split (e.g. ``'dropout'``).
    """
    if f is None:
        return lambda fn: split_rngs(fn, splits=splits, only=only, squeeze=squeeze, graph=graph)
    predicate = filterlib.to_predicate(only)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        backups = []
        for arg in jax.tree_util.tree_leaves((args, kwargs), is_leaf=is_node):
            if not is_node(arg):
                continue
            for path, node in iter_graph(arg):
                if isinstance(node, RngStream) and predicate((*path, "key"), node.key):
                    backups.append((node, node.key.value, node.count.value))
                    key = jax.random.split(node(), splits)
                    node.key.value = key
                    node.count.value = jnp.zeros(key.shape, dtype=jnp.uint32)
        try:
            return f(*args, **kwargs)
        finally:
            for node, key, count in backups:
                node.key.value = key
                node.count.value = count + 1

    return wrapper


# -- loops -----------------------------------------------------------------------------


class _Loop:
    """A loop value (``fori_loop``/``while_loop``): flattened once; inside the body, rebuilt
    from the carry and read back from what the body returns, which must be the loop value
    again: the same structure and, in every mode, the same Variables (values may change)."""

    def __init__(self, init_val: Any, mode: Mode, name: str):
        self.extraction = Extraction([init_val], mode)
        self.static = self.extraction.static
        self.mode, self.name = mode, name
        self.init = (self.extraction.leaf_values(), self.extraction.ordinary)

    def build(self, carry: tuple) -> tuple[Any, Any]:
        vals, ords = carry
        (val,), u, _ = rebuild(self.static, vals, ords)
        return val, u

    def carry_of(self, out: Any, u: Any) -> tuple[list, list]:
        g = Flattener(tree=not self.mode.graph)
        g.label = "output"
        flat, treedef = jax.tree_util.tree_flatten(out, is_leaf=is_node)
        defs, ords = [], []
        for x in flat:
            if is_node(x):
                defs.append(g.flatten(x))
            else:
                defs.append(None)
                ords.append(x)
        arg_treedef, arg_defs = self.static.args[0]
        if arg_treedef is None:  # the loop value is a graph node itself
            same = len(defs) == 1 and defs[0] == arg_defs[0]
        else:
            same = treedef == arg_treedef and tuple(defs) == arg_defs
        if not same:
            raise ValueError(
                f"nnx.{self.name}: the body must return the loop value with the same structure "
                "(same nodes and Variables, ordinary leaves of the same kinds); it returned a "
                "different one. Update Variables in place (v[...] = ...) instead of replacing "
                "them, and do not add or remove attributes."
            )
        for k, obj in enumerate(g.objects):
            if u.objects.get(k) is not obj:
                raise ValueError(
                    f"nnx.{self.name}: the body returned a new {type(obj).__name__} at "
                    f"'{g.where(k)}'; it must return the loop value's own Variables and nodes "
                    "(update them in place) so that they can be carried."
                )
        return [x._raw_value if isinstance(x, Variable) else x for x in g.leaves], ords

    def finish(self, carry: tuple) -> Any:
        """Write the final carry into the caller's objects; the loop value with new leaves."""
        vals, ords = carry
        f = self.extraction.flattener
        info = CallInfo(
            _input_defs(self.static), jax.tree_util.tree_structure(()), (),
            tuple(range(len(f.objects))), False, False, None,
        )
        apply(self.extraction, StaticBox(info), list(vals), [])
        (arg_treedef, arg_defs), it = self.static.args[0], iter(ords)
        if arg_treedef is None:
            return f.objects[0]
        nodes = iter(f.objects[i] for i in _top_level_objects(arg_defs))
        return arg_treedef.unflatten([next(it) if d is None else next(nodes) for d in arg_defs])


def _top_level_objects(defs: tuple) -> list[int]:
    """The object index of each top-level node or Variable definition (a RefDef's target)."""
    return [d.index for d in defs if d is not None]


def fori_loop(
    lower: int, upper: int, body_fun: Callable[[Any, Any], Any], init_val: Any, *,
    unroll: int | bool | None = None, graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.fori_loop`` where the loop value may hold graph nodes; ``body_fun(i, val)``
    returns the loop value again (the same nodes and Variables, updated in place or with new
    values); the caller's objects are updated and returned in it."""
    loop = _Loop(init_val, resolve_mode(graph, graph_updates), "fori_loop")

    def body(i: Any, carry: tuple) -> tuple:
        val, u = loop.build(carry)
        return loop.carry_of(body_fun(i, val), u)

    kwargs = {} if unroll is None else {"unroll": unroll}
    return loop.finish(jax.lax.fori_loop(lower, upper, body, loop.init, **kwargs))


def while_loop(
    cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: Any, *,
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.while_loop`` where the loop value may hold graph nodes (see ``fori_loop``)."""
    loop = _Loop(init_val, resolve_mode(graph, graph_updates), "while_loop")

    def cond(carry: tuple) -> Any:
        return cond_fun(loop.build(carry)[0])

    def body(carry: tuple) -> tuple:
        val, u = loop.build(carry)
        return loop.carry_of(body_fun(val), u)

    return loop.finish(jax.lax.while_loop(cond, body, loop.init))


__all__ = [
    "Carry", "StateAxes", "fori_loop", "pmap", "scan", "split_rngs", "vmap", "while_loop",
]
