"""``nnx.vmap`` and ``nnx.pmap``: ``jax.vmap`` / ``jax.pmap`` for functions of graph nodes.

Axes are prefixes, per positional argument (keyword arguments are bound to their positions):
an int or None for everything below, a pytree of them, or for a graph node a ``StateAxes`` (by
filter), a State of axes (by path), or what ``nnx.prefix`` returns. Each state leaf of the
arguments and each leaf of the outputs gets its axis from them. State that a function creates
or changes (``__init__`` under vmap, BatchNorm statistics) leaves with the axis its argument's
prefix gives it; Modules returned leave with ``out_axes``. A Variable reachable from two
arguments (or an argument and the output) must get the same axis from both.

The mapped pure function is kept per argument structure and axes: its output axes are worked
out once, by an abstract trace, and ``nnx.pmap`` compiles once per signature.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from nnx import graph as graphlib
from nnx._graphdef import LeafDef, RefDef, VariableDef, child_defs
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx.transforms import prefixes
from nnx.transforms.axis_metadata import call_with_axis_metadata
from nnx.transforms.lift import (
    CallInfo,
    Extraction,
    apply,
    collect,
    rebuild,
    reject_bound_method,
    resolve_kwargs,
)
from nnx.transforms.programs import ProgramCache
from nnx.variablelib import build_variable


def per_argument(axes: Any, n: int, name: str, transform: str) -> list[Any]:
    """``axes`` as one entry per argument: a tuple or list gives them; else one for all."""
    if isinstance(axes, list | tuple):
        if len(axes) != n:
            raise ValueError(
                f"nnx.{transform}: {name} has {len(axes)} entries but the function got {n} "
                "arguments"
            )
        return list(axes)
    return [axes] * n


def leaf_shapes(d: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Per leaf that ``d`` defines: its path and a stand-in leaf (a value-less Variable of the
    recorded type and metadata, or None for a raw array), for filters and path lookups.
    References (``RefDef``) and static values define no leaves."""
    if isinstance(d, VariableDef):
        return [(path, build_variable(d.type, None, {k: s.value for k, s in d.metadata}))]
    if isinstance(d, LeafDef):
        return [(path, None)]
    return [shape for key, child in child_defs(d) for shape in leaf_shapes(child, (*path, key))]


def _state_axes(
    info: CallInfo, static_args: tuple, arg_axes: list[Any], input_axes: list[Any],
) -> list[Any]:
    """The out axis of each state leaf the call returns (the arguments' leaves)."""
    if info.updated is not None:  # structure unchanged: every input leaf, its input axis
        return list(input_axes)
    axes = []
    for (treedef, arg_defs), defs, spec in zip(static_args, info.in_defs, arg_axes, strict=True):
        if treedef is None:
            node_specs = [spec]
        else:
            stand_in = treedef.unflatten([0 if d is None else _NODE for d in arg_defs])
            item_specs = prefixes.broadcast_prefix(spec, stand_in, "in_axes")
            node_specs = [s for s, d in zip(item_specs, arg_defs, strict=True) if d is not None]
        for d, s in zip(defs, node_specs, strict=True):
            shapes = leaf_shapes(d)
            axes.extend(prefixes.node_leaf_specs(s, [p for p, _ in shapes], [x for _, x in shapes]))
    return axes


class _Marker:
    """Stands for a graph node in an argument when prefixes are matched against it."""


_NODE = _Marker()


def _check_returned_inputs(
    info: CallInfo, extraction: Extraction, out_axes: Any, leaf_axes: list[Any]
) -> None:
    """An input returned as an output must leave on the axis it came in on."""
    items = info.out_treedef.unflatten([_NODE if d is not None else 0 for d in info.out_defs])
    specs = prefixes.broadcast_prefix(out_axes, items, "out_axes")
    f = extraction.flattener
    leaf_of = {id(leaf): k for k, leaf in enumerate(extraction.leaves)}
    for d, s in zip(info.out_defs, specs, strict=True):
        if not isinstance(d, RefDef) or d.index >= len(f.objects):
            continue
        obj = f.objects[d.index]
        for leaf_path, leaf in _leaves_below(extraction, obj):
            wanted = prefixes.node_leaf_specs(s, [leaf_path], [leaf])[0]
            given = leaf_axes[leaf_of[id(leaf)]]
            if wanted != given:
                raise ValueError(
                    f"Inconsistent aliasing detected: the {type(leaf).__name__} at "
                    f"'{'/'.join(map(str, leaf_path)) or '<root>'}' of an input returned as an "
                    f"output comes in on axis {given} and would leave on axis {wanted}; return "
                    "it on its input axis (or return a copy)."
                )


def _leaves_below(extraction: Extraction, obj: Any) -> list[tuple[tuple, Any]]:
    """The leaves of an input object, with their paths relative to it."""
    graphdef, leaves = graphlib.flatten(obj)
    return list(zip(graphdef.paths, leaves, strict=True))


def _output_axes(info: CallInfo, out_axes: Any) -> tuple[list[Any], list[Any]]:
    """The out axis of each leaf of the output's graph nodes, and of each other output leaf."""
    items = info.out_treedef.unflatten([_NODE if d is not None else 0 for d in info.out_defs])
    specs = prefixes.broadcast_prefix(out_axes, items, "out_axes")
    node_axes, ord_axes = [], []
    for d, s in zip(info.out_defs, specs, strict=True):
        if d is None:
            ord_axes.append(s)
        else:
            shapes = leaf_shapes(d)
            node_axes.extend(prefixes.node_leaf_specs(s, [p for p, _ in shapes], [x for _, x in shapes]))
    return node_axes, ord_axes


def _make_pure(f: Callable[..., Any], static: Any, n_in: int) -> Callable[..., tuple]:
    def pure(values: list, ordinary: list) -> tuple:
        args, u, inner = rebuild(static, values, ordinary)
        new_vals, out_ord, box = collect(static, inner, u, f(*args), values, keep_all=True)
        n_state = n_in if box.value.updated is not None else len(new_vals) - _n_out_leaves(box.value)
        return new_vals[:n_state], new_vals[n_state:], out_ord, box

    return pure


def _n_out_leaves(info: CallInfo) -> int:
    return sum(len(leaf_shapes(d)) for d in info.out_defs if d is not None)


def mapped(
    jax_transform: Callable[..., Any], f: Callable[..., Any], in_axes: Any, out_axes: Any,
    name: str, mode: Mode, transform_metadata: Any = None, **transform_kwargs: Any,
) -> Callable[..., Any]:
    """The shared body of ``vmap`` and ``pmap``."""
    reject_bound_method(f, name)
    inner = f
    if transform_metadata:
        def inner(*args: Any) -> Any:
            return call_with_axis_metadata(f, args, {}, in_axes, out_axes, transform_metadata)
    prefixes.check_prefix(in_axes, "in_axes", name, mode)
    prefixes.check_prefix(out_axes, "out_axes", name, mode)
    programs = ProgramCache()

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = resolve_kwargs(f, args, kwargs, name)
        extraction = Extraction(list(args), mode)
        arg_axes = per_argument(in_axes, len(args), "in_axes", name)
        leaf_axes, ord_axes = prefixes.argument_leaf_specs(
            extraction, args, arg_axes, f"nnx.{name} in_axes"
        )
        values = extraction.leaf_values()

        def axes_of(info: CallInfo) -> tuple:
            if mode.full:
                _check_returned_inputs(info, extraction, out_axes, leaf_axes)
            state_axes = _state_axes(info, extraction.static.args, arg_axes, leaf_axes)
            node_axes, out_ord_axes = _output_axes(info, out_axes)
            return state_axes, node_axes, out_ord_axes

        def make() -> Any:
            pure = _make_pure(inner, extraction.static, len(values))
            if jax_transform is jax.pmap:
                # One trace: every output leaves on the device axis; the axes are applied
                # after the call (None: one device's copy, as jax.pmap gives).
                return [jax.pmap(pure, in_axes=(leaf_axes, ord_axes), out_axes=0, **transform_kwargs), None]
            # vmap needs the real output axes up front (a broadcast axis for a batched value
            # is an error): learn the output structure by an abstract trace with every output
            # on axis 0.
            # (without the metadata transform, whose Variable hooks must run once per call)
            zeros = jax.vmap(
                _make_pure(f, extraction.static, len(values)), in_axes=(leaf_axes, ord_axes), out_axes=0,
                axis_name=transform_kwargs.get("axis_name"),
                axis_size=transform_kwargs.get("axis_size"),
            )
            info = jax.eval_shape(zeros, values, extraction.ordinary)[3].value
            axes = axes_of(info)
            mapped_fn = jax.vmap(pure, in_axes=(leaf_axes, ord_axes), out_axes=(*axes, 0), **transform_kwargs)
            return [mapped_fn, axes, _state_labels(info, extraction)]

        key = (extraction.static, tuple(leaf_axes), tuple(ord_axes))
        entry = programs.get(key, make)
        try:
            state, node_leaves, out_ord, box = entry[0](values, extraction.ordinary)
        except ValueError as e:
            named = _named_state_error(e, entry[2] if len(entry) > 2 else None)
            if named is None:
                raise
            raise named from None
        if jax_transform is jax.pmap:
            if entry[1] is None:
                entry[1] = axes_of(box.value)
            state_axes, node_axes, out_ord_axes = entry[1]
            state = [_from_device_axis(x, a) for x, a in zip(state, state_axes, strict=True)]
            node_leaves = [_from_device_axis(x, a) for x, a in zip(node_leaves, node_axes, strict=True)]
            out_ord = [_from_device_axis(x, a) for x, a in zip(out_ord, out_ord_axes, strict=True)]
        new_vals = list(state) + list(node_leaves)
        if box.value.updated is not None:
            new_vals = _keep_unchanged(box.value, new_vals, values)
        return apply(extraction, box, new_vals, out_ord)

    return wrapper


def _state_labels(info: CallInfo, extraction: Extraction) -> list[str]:
    """A name for each state leaf the call returns: its type, path and argument."""
    f = extraction.flattener
    if info.updated is not None:  # structure unchanged: the input leaves
        return [
            f"the {type(leaf).__name__} '{'/'.join(map(str, path))}' of args[{i}]"
            for leaf, path, i in zip(extraction.leaves, f.paths, extraction.leaf_args, strict=True)
        ]
    labels = []
    for i, defs in enumerate(info.in_defs):
        for d in defs:
            for path, stand_in in leaf_shapes(d) if d is not None else ():
                kind = type(stand_in).__name__ if stand_in is not None else "array"
                labels.append(f"the {kind} '{'/'.join(map(str, path))}' of args[{i}]")
    return labels


_BATCHED_BROADCAST = re.compile(r"at vmap out_axes\[0\]\[(\d+)\], (got axis spec None but output was batched.*)", re.S)


def _named_state_error(error: ValueError, labels: list[str] | None) -> ValueError | None:
    """jax.vmap's error for a state leaf with out axis None that came out batched, naming the
    leaf (the positional out_axes path JAX gives means nothing to the caller); None for any
    other error."""
    match = _BATCHED_BROADCAST.search(str(error))
    if labels is None or match is None or int(match.group(1)) >= len(labels):
        return None
    return ValueError(
        f"at vmap, {labels[int(match.group(1))]} came in without a batch axis (in_axes None), "
        f"but the function gave it a batched value: {match.group(2)}. Give it an axis in "
        "in_axes, or do not write batched values into it."
    )


def _from_device_axis(x: Any, axis: Any) -> Any:
    """A pmap output (device axis first) with its device axis where ``axis`` says."""
    if axis is None:
        return x[0]
    return x if axis == 0 else jax.numpy.moveaxis(x, 0, axis)


def _keep_unchanged(info: CallInfo, new_vals: list, values: Sequence[Any]) -> list:
    """The caller's arrays where the function left a state leaf unchanged."""
    full = list(values)
    for i in info.updated:
        full[i] = new_vals[i]
    return full + new_vals[len(values):]


def vmap(
    f: Callable[..., Any] | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
    transform_metadata: Any = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.vmap`` for functions of graph nodes; see the module docstring. Usable as a
    decorator, also on ``__init__`` (a stack of layers) and ``__call__``.

    Args:
      f: the function.
      in_axes: per positional argument a prefix of axes (see the module docstring), or one
        for all arguments.
      out_axes: a prefix of axes for the output (Modules included).
      axis_name, axis_size, spmd_axis_name: as in ``jax.vmap``.
      transform_metadata: ``{nnx.PARTITION_NAME: name, ...}``: the mapped axis's entry in the
        Variables' ``out_sharding`` (see ``nnx.transform_metadata``).
      graph / graph_updates: graph or tree mode, and whether structure changes are carried out.
    """
    if f is None:
        return lambda fn: vmap(
            fn, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size,
            spmd_axis_name=spmd_axis_name, transform_metadata=transform_metadata, graph=graph,
            graph_updates=graph_updates,
        )
    return mapped(
        jax.vmap, f, in_axes, out_axes, "vmap", resolve_mode(graph, graph_updates),
        transform_metadata, axis_name=axis_name, axis_size=axis_size,
        spmd_axis_name=spmd_axis_name,
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
    return mapped(jax.pmap, f, in_axes, out_axes, "pmap", resolve_mode(graph, graph_updates), **kwargs)


__all__ = ["pmap", "vmap"]
