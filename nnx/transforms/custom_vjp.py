"""``nnx.custom_vjp``: ``jax.custom_vjp`` for functions of graph nodes.

Because Modules have reference semantics, a function may update its input Modules (a BatchNorm
statistic, an RNG counter). Those updates are extra outputs of the differentiated function, so the
backward rule receives ``g = (input_updates_g, out_g)``: ``input_updates_g`` holds, per argument,
a ``State`` of cotangents for the differentiable Variables of a graph-node argument (``None`` for
other arguments), and ``out_g`` the cotangent of the output. ``bwd`` returns one cotangent per
differentiable argument: a ``State`` (shaped like that argument's differentiable state) for a
graph node, an ordinary cotangent pytree otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnx import filterlib
from nnx._modes import DEFAULT as DEFAULT_MODE
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx.statelib import State
from nnx.transforms.autodiff import DiffState
from nnx.transforms.lift import (
    Extraction,
    apply,
    argument_items,
    collect_values_only,
    is_node,
    rebuild,
    reject_bound_method,
)
from nnx.variablelib import Variable


def _split_nondiff(nondiff_argnums: Sequence[int | DiffState]) -> tuple[tuple[int, ...], dict]:
    ints, diff_filters = [], {}
    for a in nondiff_argnums:
        if isinstance(a, DiffState):
            diff_filters[a.argnum] = a.filter
        elif isinstance(a, int):
            ints.append(a)
        else:
            raise TypeError(f"custom_vjp: nondiff_argnums entries must be ints or nnx.DiffState, got {a!r}")
    return tuple(sorted(ints)), diff_filters


class CustomVjp:
    """The callable returned by ``nnx.custom_vjp``; give it its rules with ``defvjp``."""

    def __init__(
        self, fun: Callable[..., Any], nondiff_argnums: Sequence[int | DiffState] = (),
        mode: Mode = DEFAULT_MODE,
    ):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.mode = mode
        if not mode.full and any(isinstance(a, DiffState) for a in nondiff_argnums):
            raise ValueError(
                "nnx.custom_vjp: `nondiff_argnums` cannot contain `DiffState` objects when "
                "graph=False or graph_updates=False; use graph=True, graph_updates=True."
            )
        self.nondiff_ints, self.diff_filters = _split_nondiff(nondiff_argnums)
        self.fwd: Callable[..., Any] | None = None
        self.bwd: Callable[..., Any] | None = None

    def defvjp(self, fwd: Callable[..., Any], bwd: Callable[..., Any]) -> None:
        """Set the rules: ``fwd(*args) -> (out, residuals)`` and
        ``bwd(*nondiff_args, residuals, (input_updates_g, out_g)) -> cotangents``; residuals may
        hold graph nodes."""
        self.fwd = fwd
        self.bwd = bwd

    def __call__(self, *args: Any) -> Any:
        if self.fwd is None or self.bwd is None:
            raise TypeError(
                f"custom_vjp function {getattr(self.fun, '__name__', self.fun)!r} has no rules; "
                "call .defvjp(fwd, bwd) first."
            )
        n = len(args)
        nondiff_pos = [i % n if i < 0 else i for i in self.nondiff_ints]
        for i in nondiff_pos:
            if i >= n:
                raise ValueError(f"custom_vjp: nondiff_argnums has {i} but the function got {n} arguments")
            if any(is_node(x) for x in jax.tree_util.tree_leaves(args[i], is_leaf=is_node)):
                raise TypeError(
                    f"custom_vjp: argument {i} holds graph nodes and cannot be in nondiff_argnums as "
                    "an int; pass nnx.DiffState(argnum, filter) to choose its differentiable state."
                )
        diff_pos = [i for i in range(n) if i not in nondiff_pos]
        return _call(self, args, nondiff_pos, diff_pos)


def _call(cv: CustomVjp, args: tuple, nondiff_pos: list[int], diff_pos: list[int]) -> Any:
    fun, fwd, bwd = cv.fun, cv.fwd, cv.bwd
    diff_args = [args[i] for i in diff_pos]
    nondiff_args = [args[i] for i in nondiff_pos]
    extraction = Extraction(diff_args, cv.mode)
    static = extraction.static
    leaves, paths = extraction.leaves, extraction.paths
    # Which leaves have a tangent: every Variable of a node argument, or those its DiffState picks.
    is_diff = []
    for leaf, path, a in zip(leaves, paths, extraction.leaf_args, strict=True):
        filt = cv.diff_filters.get(diff_pos[a])
        is_diff.append(filt is None or filterlib.to_predicate(filt)(path, leaf))
    d_idx = [j for j, d in enumerate(is_diff) if d]
    o_idx = [j for j, d in enumerate(is_diff) if not d]
    values = extraction.leaf_values()
    box_cell: list[Any] = []
    res_cell: list[Any] = []

    def full_args(d_vals: list, o_vals: list, ords: list) -> tuple[list, Any, list]:
        vals: list[Any] = [None] * len(values)
        for j, v in zip(d_idx, d_vals, strict=True):
            vals[j] = v
        for j, v in zip(o_idx, o_vals, strict=True):
            vals[j] = v
        built, u, inner = rebuild(static, vals, ords)
        full = list(built)
        for i, v in zip(nondiff_pos, nondiff_args, strict=True):
            full.insert(i, v)
        return full, u, inner

    def finish(u: Any, inner: list, out: Any) -> tuple[list, Any]:
        new_vals, out, box = collect_values_only(static, inner, u, out, "custom_vjp")
        box_cell[:] = [box]
        return new_vals, out

    def primal(d_vals: list, o_vals: list, ords: list) -> tuple[list, Any]:
        full, u, inner = full_args(d_vals, o_vals, ords)
        return finish(u, inner, fun(*full))

    def primal_fwd(d_vals: list, o_vals: list, ords: list) -> tuple:
        full, u, inner = full_args(d_vals, o_vals, ords)
        result = fwd(*full)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("custom_vjp: fwd must return (output, residuals)")
        out, res = result
        outputs = finish(u, inner, out)
        res_extraction = Extraction([res])
        res_cell[:] = [res_extraction.static]
        return outputs, (res_extraction.leaf_values(), res_extraction.ordinary)

    def primal_bwd(residuals: tuple, g: tuple) -> tuple:
        res_leaves, res_ords = residuals
        (res,), _, _ = rebuild(res_cell[0], res_leaves, res_ords)
        g_vals, g_out = g
        input_updates_g = _updates_cotangent(extraction, diff_args, d_idx, g_vals)
        cts = bwd(*nondiff_args, res, (input_updates_g, g_out))
        if not isinstance(cts, tuple | list) or len(cts) != len(diff_args):
            raise TypeError(
                f"custom_vjp: bwd must return a tuple with one cotangent per differentiable "
                f"argument ({len(diff_args)}), got {_describe(cts)}"
            )
        ct_leaves, ct_ords = _cotangents(extraction, diff_args, cts)
        return (
            [_zero_if_none(ct_leaves[j], values[j]) for j in d_idx],
            [None] * len(o_idx),
            [_zero_if_none(c, x) for c, x in zip(ct_ords, extraction.ordinary, strict=True)],
        )

    f = jax.custom_vjp(primal)
    f.defvjp(primal_fwd, primal_bwd)
    new_vals, out = f([values[j] for j in d_idx], [values[j] for j in o_idx], extraction.ordinary)
    return apply(extraction, box_cell[0], new_vals, jax.tree_util.tree_leaves(out))


def _updates_cotangent(extraction: Extraction, diff_args: list, d_idx: list[int], g_vals: list) -> tuple:
    """Per argument, the cotangents of its nodes' updated state: a State of the differentiable
    Variables in place of each graph node (None for arguments without nodes)."""
    d_set = set(d_idx)

    def node_state(start: int, stop: int) -> State:
        pairs = []
        for j in range(start, stop):
            if j in d_set:
                leaf, value = extraction.leaves[j], g_vals[j]
                pairs.append((extraction.paths[j], leaf.copy(value) if isinstance(leaf, Variable) else value))
        return State.from_flat_path(pairs)

    out = []
    for treedef, items in argument_items(extraction, diff_args):
        if all(r is None for _, r in items):
            out.append(None)
            continue
        out.append(treedef.unflatten([None if r is None else node_state(*r) for _, r in items]))
    return tuple(out)


def _cotangents(extraction: Extraction, diff_args: list, cts: Sequence[Any]) -> tuple[list, list]:
    """Spread bwd's per-argument cotangents over the extraction's leaves and ordinary leaves."""
    ct_leaves: list[Any] = [None] * len(extraction.leaves)
    ct_ords: list[Any] = []
    per_arg = argument_items(extraction, diff_args)
    for a, ((treedef, items), arg, ct) in enumerate(zip(per_arg, diff_args, cts, strict=True)):
        if ct is None:
            cts_items: list[Any] = [None] * len(items)
        elif is_node(arg):
            cts_items = [ct]
        else:
            try:
                cts_items = treedef.flatten_up_to(ct)
            except (ValueError, TypeError) as e:
                raise TypeError(
                    f"custom_vjp: the cotangent bwd returned for argument {a} does not match its "
                    f"structure {treedef}: {e}"
                ) from None
        for (item, leaf_range), c in zip(items, cts_items, strict=True):
            if leaf_range is None:
                ct_ords.append(c)
                continue
            if c is None:
                continue
            if not isinstance(c, State):
                raise TypeError(
                    f"custom_vjp: the cotangent for the {type(item).__name__} in argument {a} must be "
                    f"an nnx.State shaped like its differentiable state, got {type(c).__name__}"
                )
            flat = {tuple(p): v for p, v in c.flat_state()}
            for j in range(*leaf_range):
                v = flat.get(tuple(extraction.paths[j]))
                if v is not None:
                    ct_leaves[j] = v.get_value() if isinstance(v, Variable) else v
    return ct_leaves, ct_ords


def _zero_if_none(ct: Any, primal: Any) -> Any:
    if ct is None:
        return jnp.zeros_like(primal) if jnp.issubdtype(jnp.result_type(primal), jnp.inexact) else None
    return ct


def _describe(x: Any) -> str:
    return f"{type(x).__name__} of length {len(x)}" if isinstance(x, tuple | list) else type(x).__name__


def custom_vjp(
    fun: Callable[..., Any] | None = None, *, nondiff_argnums: Sequence[int | DiffState] = (),
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.custom_vjp`` whose arguments may be Modules and other graph nodes.

    Updates the function makes to its arguments reach the caller's objects. ``bwd`` gets
    ``(input_updates_g, out_g)`` and returns one cotangent per differentiable argument (a
    ``State`` for a graph node). Int ``nondiff_argnums`` mark ordinary arguments as constants
    (passed first to ``bwd``); ``nnx.DiffState(argnum, filter)`` picks which Variables of a
    node argument have tangents (all of them by default).
    """
    mode = resolve_mode(graph, graph_updates)
    if fun is None:
        return lambda f: CustomVjp(reject_bound_method(f, "custom_vjp"), nondiff_argnums, mode)
    return CustomVjp(reject_bound_method(fun, "custom_vjp"), nondiff_argnums, mode)


__all__ = ["CustomVjp", "custom_vjp"]
