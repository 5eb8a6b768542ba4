"""``nnx.grad`` / ``nnx.value_and_grad`` and ``nnx.remat``.

In graph mode with graph updates (the default) grad differentiates the Params of Module
arguments (other state through ``DiffState`` or ``wrt=``) and returns a ``State`` per Module;
with ``graph=False`` or ``graph_updates=False`` it differentiates every array and Variable of
the arguments, as ``jax.grad`` does for a pytree, and returns copies of them (see
``tangents.py``). ``nnx.custom_vjp`` is in ``custom_vjp.py``, ``nnx.vjp`` / ``nnx.jvp`` in
``linearize.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx.transforms.lift import (
    Extraction,
    apply,
    collect,
    full_leaf_values,
    lifted_call,
    rebuild,
    reject_bound_method,
)
from nnx.transforms.prefixes import check_prefix
from nnx.transforms.tangents import (
    build_args,
    check_consistent_aliasing,
    full_values,
    select,
    state_cotangents,
)
from nnx.variablelib import Param


class DiffState:
    """Differentiate argument ``argnum`` with respect to the Variables matching ``filter``."""

    def __init__(self, argnum: int, filter: Any):
        self.argnum = argnum
        self.filter = filter

    def __repr__(self) -> str:
        return f"DiffState({self.argnum}, {self.filter!r})"


def _diff_filters(argnums: Any, wrt: Any, mode: Mode, name: str) -> tuple[dict[int, Any], bool]:
    """``{argnum: filter}`` for the differentiated arguments, and whether ``argnums`` was one
    entry. The default filter is ``nnx.Param`` in graph mode with graph updates, everything
    otherwise (the argument is then differentiated as a pytree)."""
    single = isinstance(argnums, int | DiffState)
    default = wrt if wrt is not None else (Param if mode.full else ...)
    filters: dict[int, Any] = {}
    for a in [argnums] if single else list(argnums):
        if isinstance(a, DiffState):
            index, filt = a.argnum, a.filter
        elif isinstance(a, int):
            index, filt = a, default
        else:
            raise TypeError(
                f"nnx.{name}: argnums entries must be ints or nnx.DiffState, got {a!r}"
            )
        if index in filters:
            raise ValueError(f"nnx.{name}: argnum {index} is repeated in argnums")
        filters[index] = filt
    return filters, single


def _grad_impl(
    f: Callable[..., Any], argnums: Any, has_aux: bool, wrt: Any, return_value: bool,
    jax_kwargs: dict[str, Any], mode: Mode, name: str,
) -> Callable[..., Any]:
    reject_bound_method(f, name)
    check_prefix(argnums, "argnums", name, mode)
    filters, single = _diff_filters(argnums, wrt, mode, name)
    argnum_list = list(filters)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for a in argnum_list:
            if not -len(args) <= a < len(args):
                raise ValueError(
                    f"nnx.{name}: argnum {a} but the function got {len(args)} positional arguments"
                )
        positions = [a % len(args) for a in argnum_list]
        extraction = Extraction([*args, kwargs], mode)
        if mode.graph and not mode.updates:
            check_consistent_aliasing(extraction, set(positions), f"nnx.{name}", _arg_names(args))
        selection = select(extraction, args, dict(zip(positions, filters.values(), strict=True)))
        values = extraction.leaf_values()
        static = extraction.static

        def pure(d_leaves: list, d_ord: list) -> tuple:
            vals = list(values)
            for j, v in zip(selection.leaves, d_leaves, strict=True):
                vals[j] = v
            ords = list(extraction.ordinary)
            for j, v in zip(selection.ordinary, d_ord, strict=True):
                ords[j] = v
            a, u, inner = rebuild(static, vals, ords)
            *pos, kw = a
            out = f(*pos, **kw)
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(f"nnx.{name}(has_aux=True): the function must return (loss, aux)")
                loss, aux = out
            else:
                loss, aux = out, None
            return loss, collect(static, inner, u, aux, vals)

        (loss, (new_vals, out_ord, box)), (g_leaf, g_ord) = jax.value_and_grad(
            pure, argnums=(0, 1), has_aux=True, **jax_kwargs
        )(
            [values[j] for j in selection.leaves],
            [extraction.ordinary[j] for j in selection.ordinary],
        )
        aux = apply(extraction, box, full_leaf_values(box, new_vals, values), out_ord)
        if mode.full:
            grads = state_cotangents(extraction, args, positions, selection, g_leaf, g_ord)
        else:
            leaves, ords = full_values(extraction, selection, g_leaf, g_ord, positions)
            built = build_args(static, leaves, ords, positions)
            grads = [built[a] for a in positions]
        g = grads[0] if single else tuple(grads)
        if return_value:
            return ((loss, aux) if has_aux else loss), g
        return (g, aux) if has_aux else g

    return wrapper


def _arg_names(args: Sequence[Any]) -> list[str]:
    return [f"args[{i}]" for i in range(len(args))] + ["kwargs"]


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
    """Gradient of ``f`` with respect to its ``argnums`` arguments.

    In graph mode with graph updates, the gradient of a Module argument is a ``State`` shaped
    like its Params (or like the Variables matched by ``wrt`` / ``DiffState(argnum, filter)``),
    of a Variable a Variable, of an array an array, inside the argument's containers. With
    ``graph=False`` or ``graph_updates=False`` every array and Variable is differentiated (or
    the Variables ``wrt`` matches; the others get zeros) and the gradient is a copy of the
    argument holding them, e.g. a Module of the same type. Variables updated inside ``f``
    (BatchNorm statistics, RNG counters) are written back to the caller's objects.

    Args:
      f: the function; returns a scalar (and aux with ``has_aux``).
      argnums: argument index, ``DiffState`` (graph mode with graph updates), or a sequence.
      has_aux: ``f`` returns ``(loss, aux)``; the result is then ``(grads, aux)``.
      wrt: a filter choosing the Variables of graph nodes to differentiate.
      holomorphic, allow_int: as in ``jax.grad``.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: carry structure changes out (True) or only new values; None: the setting.
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
