"""``nnx.scan``: ``jax.lax.scan`` with vmap-style axes over functions of graph nodes.

Each argument is the carry (``nnx.Carry``, at most one), scanned along an axis (an int; for a
Module: a stack of layers; a pytree prefix or ``StateAxes``/``nnx.prefix`` per leaf), or
broadcast (``None``). The function returns the carry where ``out_axes`` says ``Carry`` and
outputs stacked along their axis elsewhere; Modules created inside and returned that way come
out as stacks. Carried and broadcast Module state is carried from step to step, scanned Module
state (per-layer BatchNorm statistics, RNG counts) is stacked back. The carry returned must be
the carry given: the same structure, the same graph nodes and Variables.

The scan runs under ``jax.jit`` with one compiled function per argument structure, so repeated
calls trace the function once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnx._graphdef import count_leaves
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx.transforms import prefixes
from nnx.transforms.axis_metadata import call_with_axis_metadata
from nnx.transforms.lift import (
    Extraction,
    apply,
    collect,
    is_node,
    rebuild,
    rebuild_around_variables,
    reject_bound_method,
    resolve_kwargs,
)
from nnx.transforms.prefixes import Carry, StateAxes
from nnx.transforms.programs import ProgramCache
from nnx.variablelib import Variable


def _moveaxis(x: Any, src: int, dst: int) -> Any:
    return x if src == dst else jnp.moveaxis(x, src, dst)


def _check_axes(in_axes: Any, out_axes: Any) -> None:
    """Configuration errors, raised when ``nnx.scan`` is applied."""

    def carries(axes: Any, name: str) -> int:
        top = axes if isinstance(axes, tuple) else (axes,)
        n = sum(1 for a in top if a is Carry)
        for a in top:
            if a is not Carry and any(
                x is Carry for x in jax.tree_util.tree_leaves(a, is_leaf=lambda x: x is Carry)
            ):
                raise ValueError(
                    f"nnx.scan: {name} has nnx.Carry inside {a!r}; Carry stands for a whole "
                    "argument or output, not part of one."
                )
        if n > 1:
            raise ValueError(f"nnx.scan: Found multiple Carry definitions in {name}={axes!r}.")
        return n

    if (carries(in_axes, "in_axes") == 1) != (carries(out_axes, "out_axes") == 1):
        raise ValueError(
            f"nnx.scan: If one of in_axes or out_axes has Carry, the other must also have Carry "
            f"(in_axes={in_axes!r}, out_axes={out_axes!r})."
        )
    for a in out_axes if isinstance(out_axes, tuple) else (out_axes,):
        if a is None or isinstance(a, StateAxes) and None in a.axes:
            got = "StateAxes with None" if isinstance(a, StateAxes) else "None"
            raise ValueError(
                f"nnx.scan: Cannot broadcast output state. Got {'StateAxes' if got != 'None' else got} "
                f"in out_axes={out_axes!r}: every output is stacked along an axis (or is the Carry)."
            )


def _per_arg(in_axes: Any, n_args: int) -> list[Any]:
    if isinstance(in_axes, tuple):
        if len(in_axes) != n_args:
            raise ValueError(
                f"nnx.scan: in_axes has {len(in_axes)} entries but the function got {n_args} "
                "arguments."
            )
        return list(in_axes)
    if in_axes is Carry and n_args != 1:
        raise ValueError(
            "nnx.scan: When in_axes=Carry, the function must take exactly one argument (the "
            f"carry); it got {n_args}."
        )
    return [in_axes] * n_args


class _Plan:
    """Which leaves of the arguments are carried, scanned or constant, and along which axis."""

    def __init__(
        self, extraction: Extraction, args: Sequence[Any], arg_axes: list[Any], mode: Mode
    ):
        specs = [None if a is Carry else a for a in arg_axes]
        leaf_axes, ord_axes = prefixes.argument_leaf_specs(
            extraction, args, specs, "nnx.scan in_axes"
        )
        carry_arg = next((i for i, a in enumerate(arg_axes) if a is Carry), None)
        self.carry_arg = carry_arg
        self.leaf_axes = leaf_axes
        # Broadcast state (axis None) is carried from step to step without graph updates; with
        # them it is the same at every step and what the function does to it is dropped.
        kinds = [
            "carry" if a == carry_arg or ax is Carry or (ax is None and not mode.full)
            else "const" if ax is None else "scan"
            for ax, a in zip(leaf_axes, extraction.leaf_args, strict=True)
        ]
        self.carry_leaf = [j for j, k in enumerate(kinds) if k == "carry"]
        self.scan_leaf = [j for j, k in enumerate(kinds) if k == "scan"]
        self.const_leaf = [j for j, k in enumerate(kinds) if k == "const"]
        self.ord_axes = [
            Carry if a == carry_arg else ax
            for ax, a in zip(ord_axes, extraction.ordinary_args, strict=True)
        ]
        self.carry_ord = [j for j, ax in enumerate(self.ord_axes) if ax is Carry]
        self.scan_ord = [j for j, ax in enumerate(self.ord_axes) if isinstance(ax, int) and ax is not Carry]
        self.const_ord = [j for j, ax in enumerate(self.ord_axes) if ax is None]
        # Broadcast values that are not arrays stay Python values (``if flag:`` works): they
        # are part of the compiled function's key, not its arguments.
        self.static_ord = {
            j: extraction.ordinary[j] for j in self.const_ord
            if not isinstance(extraction.ordinary[j], jax.Array | np.ndarray)
        }

    def key(self) -> tuple:
        statics = tuple((j, _hashable(v)) for j, v in self.static_ord.items())
        return (self.carry_arg, tuple(self.leaf_axes), tuple(self.ord_axes), statics)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return ("id", id(value))


def _check_carry(carry_out: Any, carry_in: Any, mode: Mode) -> list[Any]:
    """The ordinary leaves of the returned carry, which must be the carry argument again."""
    out_items, out_def = jax.tree_util.tree_flatten(carry_out, is_leaf=is_node)
    in_items, in_def = jax.tree_util.tree_flatten(carry_in, is_leaf=is_node)
    if out_def != in_def:
        raise ValueError(
            f"nnx.scan: the carry returned ({out_def}) does not have the structure of the carry "
            f"argument ({in_def})."
        )
    for a, b in zip(out_items, in_items, strict=True):
        if is_node(b) and a is not b:
            if mode.full:
                raise ValueError(
                    "nnx.scan: Carry references must be the same between iterations: the carry "
                    f"returned holds a new {type(a).__name__} where the carry argument had "
                    "another; return the carried objects (updated in place)."
                )
            raise ValueError(
                "nnx.scan: scan Variable identity must be preserved across iterations: the "
                f"carry returned holds a new {type(a).__name__}; return the carried objects "
                "(update their values in place)."
            )
        if is_node(a) and not is_node(b):
            raise ValueError(
                "nnx.scan: scan Variable identity must be preserved across iterations: the "
                f"carry returned holds a {type(a).__name__} where the carry argument had none."
            )
    return [a for a in out_items if not is_node(a)]


def _build_run(
    f: Callable[..., Any], extraction: Extraction, plan: _Plan, out_axes: Any, mode: Mode,
    scan_kwargs: dict[str, Any],
) -> Callable[..., Any]:
    """The pure function (leaf values, ordinary leaves) -> results that one scan call runs."""
    static = extraction.static
    n_leaves, n_ord = len(extraction.leaves), len(extraction.ordinary)
    single_out = not isinstance(out_axes, tuple)
    out_spec = (out_axes,) if single_out else out_axes
    carry_pos = next((i for i, a in enumerate(out_spec) if a is Carry), None)
    leaf_axes, ord_axes = plan.leaf_axes, plan.ord_axes

    raw_carry_values = _raw_carry_reader(extraction, plan)

    def run(values: list, ordinary: list) -> tuple:
        box_cell: list[Any] = []

        def body(carry: tuple, xs: tuple) -> tuple:
            (c_leaf, c_ord), (x_leaf, x_ord) = carry, xs
            vals: list[Any] = [None] * n_leaves
            for j in plan.const_leaf:
                vals[j] = values[j]
            for j, v in zip(plan.carry_leaf, c_leaf, strict=True):
                vals[j] = v
            for j, v in zip(plan.scan_leaf, x_leaf, strict=True):
                vals[j] = v
            ords: list[Any] = [None] * n_ord
            for j in plan.const_ord:
                ords[j] = plan.static_ord[j] if j in plan.static_ord else ordinary[j]
            for j, v in zip(plan.carry_ord, c_ord, strict=True):
                ords[j] = v
            for j, v in zip(plan.scan_ord, x_ord, strict=True):
                ords[j] = v
            args, u, inner = rebuild(static, vals, ords)
            out = f(*args)
            outs = (out,) if single_out else out
            if not isinstance(outs, tuple) or len(outs) != len(out_spec):
                raise ValueError(
                    f"nnx.scan: out_axes={out_axes!r} expects {len(out_spec)} outputs, the "
                    f"function returned {type(out).__name__}."
                )
            new_c_ord: list[Any] = []
            if carry_pos is not None:
                new_c_ord = _check_carry(outs[carry_pos], args[plan.carry_arg], mode)
            ys = [o for i, o in enumerate(outs) if i != carry_pos]
            new_vals, ys_ord, box = collect(static, inner, u, ys)
            if box.value.changed:
                raise ValueError(
                    "nnx.scan: the function changed the structure of an argument (added or "
                    "removed attributes or Variables); that cannot be carried across iterations."
                )
            box_cell[:] = [box]
            if not mode.full:  # without graph updates, read the carry's raw arrays back
                for j, value in raw_carry_values(inner):
                    new_vals[j] = value
            new_c = [new_vals[j] for j in plan.carry_leaf]
            new_x = [new_vals[j] for j in plan.scan_leaf]
            return (new_c, new_c_ord), (new_x, new_vals[n_leaves:], ys_ord)

        x_leaf = [_moveaxis(values[j], leaf_axes[j], 0) for j in plan.scan_leaf]
        x_ord = [_moveaxis(ordinary[j], ord_axes[j], 0) for j in plan.scan_ord]
        init = ([values[j] for j in plan.carry_leaf], [ordinary[j] for j in plan.carry_ord])
        (c_leaf, c_ord), (x_state, y_nodes, y_ord) = jax.lax.scan(body, init, (x_leaf, x_ord), **scan_kwargs)
        box = box_cell[0]
        new_vals = list(values)
        for j, v in zip(plan.carry_leaf, c_leaf, strict=True):
            new_vals[j] = v
        for j, v in zip(plan.scan_leaf, x_state, strict=True):
            new_vals[j] = _moveaxis(v, 0, leaf_axes[j])
        # Stacked outputs: every leaf of output i takes that output's axis.
        info = box.value
        item_axes = _output_item_axes(info, [a for a in out_spec if a is not Carry])
        node_leaf_axes = [
            ax for d, ax in zip(info.out_defs, item_axes, strict=True) if d is not None
            for _ in range(count_leaves(d))
        ]
        ord_leaf_axes = [ax for d, ax in zip(info.out_defs, item_axes, strict=True) if d is None]
        y_nodes = [_moveaxis(v, 0, ax) for v, ax in zip(y_nodes, node_leaf_axes, strict=True)]
        y_ord = [_moveaxis(v, 0, ax) for v, ax in zip(y_ord, ord_leaf_axes, strict=True)]
        return new_vals + y_nodes, list(c_ord), y_ord, box

    return run


def _raw_carry_reader(extraction: Extraction, plan: _Plan) -> Callable[[list[list[Any]]], list[tuple[int, Any]]]:
    """``read(inner_nodes) -> [(leaf index, value)]`` for the raw array attributes of the carry
    argument's graph nodes, read from the objects the function was given (an attribute it
    replaced, ``state.data = state.data + 1``, is the new carry). Without graph updates
    ``collect`` keeps raw leaves at their input values, which would freeze such a carry."""
    node_of_range = []  # (argument, its k-th node) for each node occurrence, in order
    for i, (treedef, defs) in enumerate(extraction.static.args):
        count = 1 if treedef is None else sum(d is not None for d in defs)
        node_of_range += [(i, k) for k in range(count)]
    wanted = []  # (leaf index, node position in its argument, path in the node)
    for (i, k), (start, stop) in zip(node_of_range, extraction.node_ranges, strict=True):
        if i != plan.carry_arg:
            continue
        for j in range(start, stop):
            if not isinstance(extraction.leaves[j], Variable):
                wanted.append((j, k, extraction.paths[j]))

    def read(inner_nodes: list[list[Any]]) -> list[tuple[int, Any]]:
        return [(j, prefixes.value_at(inner_nodes[plan.carry_arg][k], path)) for j, k, path in wanted]

    return read


def _output_item_axes(info: Any, y_axes: list[Any]) -> list[int]:
    """The axis of each item of the flattened non-carry outputs (graph nodes as items)."""
    ys = info.out_treedef.unflatten([object()] * info.out_treedef.num_leaves)
    return [ax for y, ax in zip(ys, y_axes, strict=True) for _ in range(_count_items(y))]


def _count_items(tree: Any) -> int:
    return jax.tree_util.tree_structure(tree).num_leaves


def scan(
    f: Callable[..., Any] | None = None,
    *,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    transform_metadata: Any = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.scan`` with vmap-style axes; see the module docstring.

    Args:
      f: the function (or use as a decorator).
      length, reverse, unroll: as in ``jax.lax.scan``.
      in_axes: per argument ``nnx.Carry``, an int axis, None (broadcast), a pytree prefix of
        those, or for a Module a ``StateAxes`` / ``nnx.prefix``; or one value for all.
      out_axes: per output ``nnx.Carry`` or an int axis; one value: the function returns only
        the carry (``nnx.Carry``) or only stacked outputs.
      transform_metadata: ``{nnx.PARTITION_NAME: name, ...}``: the scanned axis's entry in the
        Variables' ``out_sharding`` (see ``nnx.transform_metadata``).
      graph / graph_updates: graph or tree mode, and whether structure changes are carried out.
    """
    if f is None:
        return lambda fn: scan(
            fn, length=length, reverse=reverse, unroll=unroll, in_axes=in_axes,
            out_axes=out_axes, transform_metadata=transform_metadata, graph=graph,
            graph_updates=graph_updates,
        )
    reject_bound_method(f, "scan")
    mode = resolve_mode(graph, graph_updates)
    prefixes.check_prefix(in_axes, "in_axes", "scan", mode)
    prefixes.check_prefix(out_axes, "out_axes", "scan", mode)
    _check_axes(in_axes, out_axes)
    scan_kwargs = dict(length=length, reverse=reverse, unroll=unroll)
    programs = ProgramCache()
    inner = f
    if transform_metadata:
        def inner(*args: Any) -> Any:
            return call_with_axis_metadata(f, args, {}, in_axes, out_axes, transform_metadata)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = resolve_kwargs(f, args, kwargs, "scan")
        arg_axes = _per_arg(in_axes, len(args))
        extraction = Extraction(list(args), mode)
        plan = _Plan(extraction, args, arg_axes, mode)
        run = programs.get(
            (extraction.static, plan.key()),
            lambda: jax.jit(_build_run(inner, extraction, plan, out_axes, mode, scan_kwargs)),
        )
        ordinary = [None if j in plan.static_ord else x for j, x in enumerate(extraction.ordinary)]
        leaf_values, carry_ord, y_ord, box = run(extraction.leaf_values(), ordinary)
        ys = apply(extraction, box, leaf_values, y_ord)
        single_out = not isinstance(out_axes, tuple)
        out_spec = (out_axes,) if single_out else out_axes
        outs, ys_it = [], iter(ys)
        for ax in out_spec:
            outs.append(
                _carry_result(extraction, plan, args, carry_ord, None if mode.full else leaf_values)
                if ax is Carry else next(ys_it)
            )
        return outs[0] if single_out else tuple(outs)

    return wrapper


def _carry_result(
    extraction: Extraction, plan: _Plan, args: Sequence[Any], carry_ord: list,
    functional_values: list | None = None,
) -> Any:
    """The carry argument with its objects and the final ordinary carry leaves.

    With graph updates the objects are the caller's, updated in place. Without them
    (``functional_values``: the final leaf values) only the caller's Variables are updated, so
    the carry's graph nodes come back as new objects holding those same Variables and the
    final values of their other attributes (a carried Variable is itself again).
    """
    carry = args[plan.carry_arg]
    if functional_values is not None and any(is_node(x) for x in jax.tree_util.tree_leaves(carry, is_leaf=is_node)):
        values = functional_values[: len(extraction.leaves)]
        carry = rebuild_around_variables(extraction, values, extraction.ordinary)[plan.carry_arg]
    items, treedef = jax.tree_util.tree_flatten(carry, is_leaf=is_node)
    it = iter(carry_ord)
    return treedef.unflatten([x if is_node(x) else next(it) for x in items])


__all__ = ["scan"]
