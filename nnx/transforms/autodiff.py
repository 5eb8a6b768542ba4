"""``nnx.grad`` / ``nnx.value_and_grad`` (Params of Module arguments by default; other state
through ``DiffState`` or ``wrt=``), ``nnx.remat`` (``nnx.custom_vjp`` is in ``custom_vjp.py``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from nnx import filterlib
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx.statelib import State
from nnx.transforms.lift import (
    Extraction,
    apply,
    collect,
    full_leaf_values,
    is_node,
    lifted_call,
    rebuild,
    reject_bound_method,
)
from nnx.variablelib import Param, Variable


class DiffState:
    """Differentiate argument ``argnum`` with respect to the Variables matching ``filter``."""

    def __init__(self, argnum: int, filter: Any):
        self.argnum = argnum
        self.filter = filter

    def __repr__(self) -> str:
        return f"DiffState({self.argnum}, {self.filter!r})"


def _diff_specs(argnums: Any, wrt: Any) -> tuple[list[tuple[int, Any]], bool]:
    single = isinstance(argnums, int | DiffState)
    items = [argnums] if single else list(argnums)
    specs = []
    for a in items:
        if isinstance(a, DiffState):
            specs.append((a.argnum, a.filter))
        elif isinstance(a, int):
            specs.append((a, Param if wrt is None else wrt))
        else:
            raise TypeError(f"argnums entries must be ints or nnx.DiffState, got {a!r}")
    return specs, single


def _grad_impl(
    f: Callable[..., Any], argnums: Any, has_aux: bool, wrt: Any, return_value: bool,
    jax_kwargs: dict[str, Any], mode: Mode, name: str,
) -> Callable[..., Any]:
    reject_bound_method(f, name)
    specs, single = _diff_specs(argnums, wrt)
    if not mode.full and any(isinstance(a, DiffState) for a in _as_list(argnums)):
        raise ValueError(
            f"nnx.{name}: argnums cannot contain `DiffState` objects when graph=False or "
            "graph_updates=False; pick the state with wrt=filter, or use graph=True, "
            "graph_updates=True."
        )

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        extraction = Extraction([*args, kwargs], mode)
        values = extraction.leaf_values()
        leaves, paths, leaf_args = extraction.leaves, extraction.paths, extraction.leaf_args
        groups: list[tuple[str, list[int]]] = []
        for argnum, filt in specs:
            if argnum >= len(args):
                raise ValueError(f"grad: argnum {argnum} but the function got {len(args)} arguments")
            arg = args[argnum]
            if is_node(arg):
                pred = filterlib.to_predicate(filt)
                idx = [
                    j for j, a in enumerate(leaf_args)
                    if a == argnum and (isinstance(arg, Variable) or pred(paths[j], leaves[j]))
                ]
                groups.append(("node", idx))
            else:
                if any(a == argnum for a in leaf_args):
                    raise TypeError(
                        f"grad: argument {argnum} mixes graph nodes and arrays in one pytree; "
                        "pass the Module and the arrays as separate arguments."
                    )
                idx = [j for j, a in enumerate(extraction.ordinary_args) if a == argnum]
                groups.append(("ordinary", idx))
        diff_leaf = [j for kind, idx in groups if kind == "node" for j in idx]
        diff_ord = [j for kind, idx in groups if kind == "ordinary" for j in idx]
        static = extraction.static

        def pure(d_leaves: list, d_ord: list) -> tuple:
            vals = list(values)
            for j, v in zip(diff_leaf, d_leaves, strict=True):
                vals[j] = v
            ords = list(extraction.ordinary)
            for j, v in zip(diff_ord, d_ord, strict=True):
                ords[j] = v
            a, u, inner = rebuild(static, vals, ords)
            *pos, kw = a
            out = f(*pos, **kw)
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError("grad(has_aux=True): the function must return (loss, aux)")
                loss, aux = out
            else:
                loss, aux = out, None
            return loss, collect(static, inner, u, aux, vals)

        (loss, (new_vals, out_ord, box)), (g_leaf, g_ord) = jax.value_and_grad(
            pure, argnums=(0, 1), has_aux=True, **jax_kwargs
        )([values[j] for j in diff_leaf], [extraction.ordinary[j] for j in diff_ord])
        aux = apply(extraction, box, full_leaf_values(box, new_vals, values), out_ord)
        g_of_leaf = dict(zip(diff_leaf, g_leaf, strict=True))
        g_of_ord = dict(zip(diff_ord, g_ord, strict=True))
        grads = []
        for (kind, idx), (argnum, _) in zip(groups, specs, strict=True):
            arg = args[argnum]
            if kind == "node":
                if isinstance(arg, Variable):
                    grads.append(leaves[idx[0]].copy(g_of_leaf[idx[0]]) if idx else None)
                else:
                    grads.append(State.from_flat_path(
                        [(paths[j], _grad_leaf(leaves[j], g_of_leaf[j])) for j in idx]
                    ))
            else:
                flat, treedef = jax.tree_util.tree_flatten(arg)
                grads.append(treedef.unflatten([g_of_ord[j] for j in idx]))
        g = grads[0] if single else tuple(grads)
        if return_value:
            return ((loss, aux) if has_aux else loss), g
        return (g, aux) if has_aux else g

    return wrapper


def _as_list(argnums: Any) -> list[Any]:
    return [argnums] if isinstance(argnums, int | DiffState) else list(argnums)


def _grad_leaf(leaf: Any, g: Any) -> Any:
    return leaf.copy(g) if isinstance(leaf, Variable) else g


def grad(
    f: Callable[..., Any] | None = None,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    has_aux: bool = False,
    *,
    wrt: Any = None,
    holomorphic: bool = False,
    allow_int: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Gradient of ``f`` with respect to the Params of Module arguments (and plain arrays).

    For a Module argument the gradient is a ``State`` shaped like its Params (or like the
    Variables matched by ``wrt`` / ``DiffState(argnum, filter)``); Variables updated inside
    ``f`` (BatchNorm statistics, RNG counters) are written back to the caller's objects.

    Args:
      f: the function; returns a scalar (and aux with ``has_aux``).
      argnums: argument index, ``DiffState``, or a sequence of them.
      has_aux: ``f`` returns ``(loss, aux)``; the result is then ``(grads, aux)``.
      wrt: a filter choosing the Variables to differentiate (default ``nnx.Param``).
    """
    kwargs = dict(holomorphic=holomorphic, allow_int=allow_int)
    mode = resolve_mode(graph, graph_updates)
    if f is None:
        return lambda fn: _grad_impl(fn, argnums, has_aux, wrt, False, kwargs, mode, "grad")
    return _grad_impl(f, argnums, has_aux, wrt, False, kwargs, mode, "grad")


def value_and_grad(
    f: Callable[..., Any] | None = None,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    has_aux: bool = False,
    *,
    wrt: Any = None,
    holomorphic: bool = False,
    allow_int: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Like ``grad`` but returns ``(value, grads)`` (``((loss, aux), grads)`` with has_aux)."""
    kwargs = dict(holomorphic=holomorphic, allow_int=allow_int)
    mode = resolve_mode(graph, graph_updates)
    name = "value_and_grad"
    if f is None:
        return lambda fn: _grad_impl(fn, argnums, has_aux, wrt, True, kwargs, mode, name)
    return _grad_impl(f, argnums, has_aux, wrt, True, kwargs, mode, name)


def remat(
    f: Callable[..., Any] | None = None,
    *,
    prevent_cse: bool = True,
    static_argnums: int | tuple[int, ...] = (),
    policy: Callable[..., bool] | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.checkpoint`` for functions of graph nodes: activations are recomputed in the
    backward pass instead of stored."""
    if f is None:
        return lambda fn: remat(fn, prevent_cse=prevent_cse, static_argnums=static_argnums,
                                policy=policy, graph=graph, graph_updates=graph_updates)
    reject_bound_method(f, "remat")
    mode = resolve_mode(graph, graph_updates)
    if static_argnums:
        raise NotImplementedError(
            "remat(static_argnums=...) is not supported; close over the static values instead."
        )

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return lifted_call(
            lambda pure: jax.checkpoint(pure, prevent_cse=prevent_cse, policy=policy),
            f, args, kwargs, mode=mode,
        )

    return wrapper


checkpoint = remat
