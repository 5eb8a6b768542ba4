"""``nnx.custom_vjp``: ``jax.custom_vjp`` for functions of graph nodes.

Because Modules have reference semantics, a function may update its arguments (a BatchStat, an
RNG counter); those updates are extra outputs of the differentiated function, and their
cotangents reach the backward rule. What ``bwd`` receives and returns depends on the mode:

- graph mode with graph updates: ``bwd(*nondiff_args, residuals, (input_updates_g, out_g))``.
  ``input_updates_g`` holds, per differentiable argument, a ``State`` of cotangents for the
  Variables of each graph node (None for arguments without nodes); ``out_g`` is
  the output's cotangent (a State for an output graph node). ``bwd`` returns one cotangent per
  differentiable argument: a State for a graph node, the cotangent itself for an array.
  ``nnx.DiffState(argnum, filter)`` in ``nondiff_argnums`` picks the differentiable Variables of
  a node argument (all by default): only their cotangents are read from what ``bwd`` returns.
  Int ``nondiff_argnums`` may not hold graph nodes.
- ``graph=False`` or ``graph_updates=False``: as ``jax.custom_vjp`` on pytrees:
  ``bwd(*nondiff_args, residuals, out_g)``, plus ``updates_g=`` when ``bwd`` takes it (per
  argument, a copy with the cotangents of the Variables that ``f`` updated, None elsewhere).
  ``bwd`` returns per differentiable argument a cotangent shaped like it (e.g.
  ``jax.tree.map(f, module)`` or ``nnx.clone(module)`` with new values). Non-differentiable
  arguments may hold graph nodes; no Variable may be shared between arguments.

Leaves that cannot have a tangent (integer arrays) get none, whatever ``bwd`` returns for them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnx._graphdef import Flattener, Unflattener
from nnx._modes import DEFAULT as DEFAULT_MODE
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx._typing import ARRAY_TYPES
from nnx.statelib import State
from nnx.transforms.autodiff import DiffState
from nnx.transforms.lift import (
    CallInfo,
    Extraction,
    apply,
    argument_items,
    collect,
    is_node,
    keep_unchanged,
    rebuild,
    reject_bound_method,
    resolve_kwargs,
)
from nnx.transforms.tangents import (
    argument_tangent_leaves,
    build_args,
    check_no_shared_variables,
    select,
    state_tangent_leaves,
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
            raise TypeError(
                f"nnx.custom_vjp: nondiff_argnums entries must be ints or nnx.DiffState, got {a!r}"
            )
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
        """Set the rules: ``fwd(*args) -> (out, residuals)`` (residuals may hold graph nodes)
        and ``bwd`` (see the module docstring for its arguments in each mode)."""
        self.fwd = fwd
        self.bwd = bwd

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fwd is None or self.bwd is None:
            raise TypeError(
                f"custom_vjp function {getattr(self.fun, '__name__', self.fun)!r} has no rules; "
                "call .defvjp(fwd, bwd) first."
            )
        args = resolve_kwargs(self.fun, args, kwargs, "custom_vjp")
        n = len(args)
        nondiff = sorted({i % n if i < 0 else i for i in self.nondiff_ints})
        for i in nondiff:
            if i >= n:
                raise ValueError(
                    f"nnx.custom_vjp: nondiff_argnums has {i} but the function got {n} arguments"
                )
            if self.mode.full and any(
                is_node(x) for x in jax.tree_util.tree_leaves(args[i], is_leaf=is_node)
            ):
                raise TypeError(
                    f"nnx.custom_vjp: argument {i} holds graph nodes and cannot be in "
                    "nondiff_argnums as an int; pass nnx.DiffState(argnum, filter) to choose its "
                    "differentiable state (or use graph_updates=False)."
                )
        return _Call(self, args, nondiff).run()


def _differentiable(x: Any) -> bool:
    x = x._raw_value if isinstance(x, Variable) else x
    return x is not None and jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class _Layout(NamedTuple):
    """Where the state leaves are after the call (graph mode with graph updates): their
    objects and paths, per argument the leaf range of each of its graph nodes, and per output
    item its leaf range (None for a non-node item)."""

    leaves: list[Any]
    paths: list[tuple]
    arg_ranges: list[list[tuple[int, int]]]
    out_ranges: list[tuple[int, int] | None]


def _post_layout(inner_nodes: list[list[Any]], out: Any) -> _Layout:
    # The same walk, in the same order, as ``collect``: its leaves are ours.
    f = Flattener()

    def walk(node: Any) -> tuple[int, int]:
        start = len(f.leaves)
        f.flatten(node)
        return start, len(f.leaves)

    arg_ranges = [[walk(n) for n in nodes] for nodes in inner_nodes]
    out_items = jax.tree_util.tree_leaves(out, is_leaf=is_node)
    out_ranges = [walk(x) if is_node(x) else None for x in out_items]
    return _Layout(f.leaves, [tuple(p) for p in f.paths], arg_ranges, out_ranges)


class _Call:
    """One call of a CustomVjp: the arguments' leaves split into those with tangents
    (``d``: state leaves, ``dord``: other arrays) and the rest (``o``, ``oord``), passed to
    ``jax.custom_vjp`` as four lists; the other leaves of the arguments stay static."""

    def __init__(self, cv: CustomVjp, args: tuple, nondiff: list[int]):
        self.cv, self.args, self.mode = cv, args, cv.mode
        self.nondiff = nondiff
        self.diff = [i for i in range(len(args)) if i not in nondiff]
        self.ex = ex = Extraction(args, cv.mode)
        if cv.mode.graph and not cv.mode.updates:
            check_no_shared_variables(ex, "nnx.custom_vjp", [f"args[{i}]" for i in range(len(args))])
        selection = select(ex, args, {i: cv.diff_filters.get(i, ...) for i in self.diff})
        values = ex.leaf_values()
        self.values = values
        chosen = set(selection.leaves)
        self.d = [j for j in range(len(values)) if j in chosen and _differentiable(values[j])]
        self.o = [j for j in range(len(values)) if j not in set(self.d)]
        diff_ords = set(selection.ordinary)
        dynamic = [j for j, x in enumerate(ex.ordinary) if isinstance(x, ARRAY_TYPES)]
        self.dord = [j for j in dynamic if j in diff_ords and _differentiable(ex.ordinary[j])]
        self.oord = [j for j in dynamic if j not in set(self.dord)]
        self.box: Any = None
        self.layout: _Layout | None = None
        self.res_static: Any = None

    # -- inside the traces of jax.custom_vjp ------------------------------------------------

    def _inputs(self, d: list, o: list, dord: list, oord: list) -> tuple[list, list]:
        vals = list(self.values)
        for j, v in zip(self.d, d, strict=True):
            vals[j] = v
        for j, v in zip(self.o, o, strict=True):
            vals[j] = v
        ords = list(self.ex.ordinary)
        for j, v in zip(self.dord, dord, strict=True):
            ords[j] = v
        for j, v in zip(self.oord, oord, strict=True):
            ords[j] = v
        return vals, ords

    def _run(self, fn: Callable[..., Any], is_fwd: bool, leaves: tuple) -> tuple:
        """Call ``fn`` (``fwd`` when ``is_fwd``) on objects rebuilt from the four leaf lists;
        return its result and the collected state (the new leaf values and the ordinary
        outputs), keeping the static part in ``self.box`` (and ``self.layout``)."""
        vals, ords = self._inputs(*leaves)
        built, u, inner = rebuild(self.ex.static, vals, ords)
        result = fn(*built)
        if is_fwd and not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("nnx.custom_vjp: fwd must return (output, residuals)")
        out = result[0] if is_fwd else result
        new_vals, out_ord, box = collect(self.ex.static, inner, u, out, vals, keep_all=True)
        self.box = box
        if self.mode.updates:
            self.layout = _post_layout(inner, out)
        return result, (new_vals, out_ord)

    def primal(self, *leaves: list) -> tuple:
        return self._run(self.cv.fun, False, leaves)[1]

    def primal_fwd(self, *leaves: list) -> tuple:
        (_, res), outputs = self._run(self.cv.fwd, True, leaves)
        # Residuals may hold graph nodes: their arrays go to JAX, their structure (and any
        # non-array leaves) stays here for bwd.
        res_ex = Extraction([res])
        is_array = [isinstance(x, ARRAY_TYPES) for x in res_ex.ordinary]
        statics = [x for x, a in zip(res_ex.ordinary, is_array, strict=True) if not a]
        arrays = [x for x, a in zip(res_ex.ordinary, is_array, strict=True) if a]
        self.res_static = (res_ex.static, statics, is_array)
        _, o, _, oord = leaves
        return outputs, (res_ex.leaf_values(), arrays, o, oord)

    def primal_bwd(self, residuals: tuple, g: tuple) -> tuple:
        res_leaves, res_arrays, o, oord = residuals
        static, statics, is_array = self.res_static
        arrays, others = iter(res_arrays), iter(statics)
        res_ords = [next(arrays) if a else next(others) for a in is_array]
        (res,), _, _ = rebuild(static, res_leaves, res_ords)
        vals, ords = self._inputs([None] * len(self.d), o, [None] * len(self.dord), oord)
        built = build_args(self.ex.static, vals, ords, self.nondiff)
        nondiff_args = [built[i] for i in self.nondiff]
        g_vals, g_out = g
        if self.mode.updates:
            g_arg = (self._input_updates_g(g_vals), self._out_g_states(g_vals, g_out))
            cts = self.cv.bwd(*nondiff_args, res, g_arg)
        else:
            kwargs = {}
            if _takes_updates_g(self.cv.bwd):
                kwargs["updates_g"] = self._updates_g(g_vals)
            cts = self.cv.bwd(*nondiff_args, res, self._out_g_tree(g_vals, g_out), **kwargs)
        if not isinstance(cts, tuple | list) or len(cts) != len(self.diff):
            raise TypeError(
                f"nnx.custom_vjp: bwd must return a tuple with one cotangent per differentiable "
                f"argument ({len(self.diff)}), got {_describe(cts)}"
            )
        ct_leaves, ct_ords = self._read_cotangents(cts)
        return (
            [ct_leaves.get(j) for j in self.d],
            [None] * len(self.o),
            [ct_ords.get(j) for j in self.dord],
            [None] * len(self.oord),
        )

    # -- what bwd receives -------------------------------------------------------------

    def _input_updates_g(self, g_vals: list) -> tuple:
        """Per differentiable argument: a State of cotangents per graph node, for all its
        Variables after the call (graph updates)."""
        layout = self.layout
        per_arg = argument_items(self.ex, self.args)
        out = []
        for a in self.diff:
            treedef, items = per_arg[a]
            if all(r is None for _, r in items):
                out.append(None)
                continue
            ranges = iter(layout.arg_ranges[a])
            parts = []
            for item, r in items:
                if r is None:
                    parts.append(None)
                    continue
                start, stop = next(ranges)
                if isinstance(item, Variable) and stop > start:
                    parts.append(layout.leaves[start].copy(g_vals[start]))
                    continue
                parts.append(State.from_flat_path([
                    (layout.paths[k], _with_value(layout.leaves[k], g_vals[k]))
                    for k in range(start, stop)
                ]))
            out.append(parts[0] if is_node(self.args[a]) else treedef.unflatten(parts))
        return tuple(out)

    def _out_g_states(self, g_vals: list, g_out: list) -> Any:
        """The output's cotangent with a State per output graph node (graph updates)."""
        info: CallInfo = self.box.value
        layout = self.layout
        it = iter(g_out)
        items = []
        for r in layout.out_ranges:
            if r is None:
                items.append(next(it))
            else:
                items.append(State.from_flat_path([
                    (layout.paths[k], _with_value(layout.leaves[k], g_vals[k])) for k in range(*r)
                ]))
        return info.out_treedef.unflatten(items)

    def _out_g_tree(self, g_vals: list, g_out: list) -> Any:
        """The output's cotangent shaped like the output (output nodes as new objects)."""
        info: CallInfo = self.box.value
        u = Unflattener(list(g_vals[len(self.values):]))
        it = iter(g_out)
        items = [next(it) if d is None else u.unflatten(d) for d in info.out_defs]
        return info.out_treedef.unflatten(items)

    def _updates_g(self, g_vals: list) -> tuple:
        """Per argument, a copy holding the cotangents of the Variables ``f`` updated, with
        None in the place of the other Variables and arrays."""
        updated = set(self.box.value.updated or ())
        leaves = [
            leaf.copy(g_vals[j]) if j in updated and isinstance(leaf, Variable) else None
            for j, leaf in enumerate(self.ex.leaves)
        ]
        n = len(self.args)
        built = build_args(self.ex.static, leaves, [None] * len(self.ex.ordinary), range(n), masked=True)
        return tuple(built[i] for i in range(n))

    # -- what bwd returns --------------------------------------------------------------

    def _read_cotangents(self, cts: Sequence[Any]) -> tuple[dict[int, Any], dict[int, Any]]:
        leaves: dict[int, Any] = {}
        ords: dict[int, Any] = {}
        per_arg = argument_items(self.ex, self.args) if self.mode.updates else None
        for a, ct in zip(self.diff, cts, strict=True):
            if per_arg is not None:
                treedef, items = per_arg[a]
                got = state_tangent_leaves(
                    self.ex, a, items, None if is_node(self.args[a]) else treedef, ct,
                    "nnx.custom_vjp",
                )
            else:
                got = argument_tangent_leaves(self.ex, a, ct, self.mode, "nnx.custom_vjp")
            leaves.update(got[0])
            ords.update(got[1])
        return leaves, ords

    # -- the call ------------------------------------------------------------------------

    def run(self) -> Any:
        f = jax.custom_vjp(self.primal)
        f.defvjp(self.primal_fwd, self.primal_bwd)
        values, ords = self.values, self.ex.ordinary
        new_vals, out_ord = f(
            [values[j] for j in self.d], [values[j] for j in self.o],
            [ords[j] for j in self.dord], [ords[j] for j in self.oord],
        )
        info: CallInfo = self.box.value
        if info.updated is not None:
            n_in = len(values)
            new_vals = keep_unchanged(info, new_vals[:n_in], values) + list(new_vals[n_in:])
        return apply(self.ex, self.box, new_vals, out_ord)


def _with_value(leaf: Any, value: Any) -> Any:
    return leaf.copy(value) if isinstance(leaf, Variable) else value


def _takes_updates_g(bwd: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(bwd).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "updates_g" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _describe(x: Any) -> str:
    return f"{type(x).__name__} of length {len(x)}" if isinstance(x, tuple | list) else type(x).__name__


def custom_vjp(
    fun: Callable[..., Any] | None = None, *, nondiff_argnums: Sequence[int | DiffState] = (),
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.custom_vjp`` whose arguments may be Modules and other graph nodes.

    Updates the function makes to its arguments reach the caller's objects; see the module
    docstring for what ``bwd`` receives and returns in each mode.

    Args:
      fun: the function; usable as ``@nnx.custom_vjp`` or ``@nnx.custom_vjp(...)``.
      nondiff_argnums: argument indices passed to ``bwd`` first instead of differentiated,
        and (graph mode with graph updates) ``nnx.DiffState(argnum, filter)`` entries choosing
        which Variables of a node argument have tangents.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: carry structure changes out (True) or only new values; None: the setting.
    """
    mode = resolve_mode(graph, graph_updates)
    if fun is None:
        return lambda f: CustomVjp(reject_bound_method(f, "custom_vjp"), nondiff_argnums, mode)
    return CustomVjp(reject_bound_method(fun, "custom_vjp"), nondiff_argnums, mode)


__all__ = ["CustomVjp", "custom_vjp"]
