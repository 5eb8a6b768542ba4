"""``nnx.vjp`` and ``nnx.jvp``: ``jax.vjp`` / ``jax.jvp`` whose primals may hold graph nodes.

Every array and Variable of the primals is differentiated, as JAX does for a pytree; the
(co)tangents of a Module are copies of it holding them (see ``tangents.py``). Variables that
the function updates are written back to the caller's objects. Like Flax, both need
``graph=False`` or ``graph_updates=False``.
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
    rebuild,
    reject_bound_method,
)
from nnx.transforms.tangents import argument_tangent_leaves, build_args, zero_cotangent


def _check_mode(mode: Mode, name: str) -> None:
    if mode.full:
        raise NotImplementedError(
            f"nnx.{name} does not support graph mode with graph updates; pass graph=False or "
            "graph_updates=False."
        )


def _pure(f: Callable[..., Any], extraction: Extraction, has_aux: bool, name: str) -> Callable:
    """``(leaf values, ordinary values) -> (out, (collected state, aux))`` for ``f``."""
    static = extraction.static
    values = extraction.leaf_values()

    def pure(vals: list, ords: list) -> tuple:
        a, u, inner = rebuild(static, vals, ords)
        out = f(*a)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"nnx.{name}(has_aux=True): the function must return (out, aux)")
            out, aux = out
        else:
            aux = None
        return out, collect(static, inner, u, aux, values)

    return pure


def _finish(extraction: Extraction, collected: tuple) -> Any:
    """Write the updates back; return the (rebuilt) aux."""
    new_vals, out_ord, box = collected
    full = full_leaf_values(box, new_vals, extraction.leaf_values())
    return apply(extraction, box, full, out_ord)


def _vjp_call(f: Callable[..., Any], primals: tuple, has_aux: bool, mode: Mode) -> tuple:
    extraction = Extraction(list(primals), mode)
    out, raw_vjp, collected = jax.vjp(
        _pure(f, extraction, has_aux, "vjp"), extraction.leaf_values(), extraction.ordinary,
        has_aux=True,
    )
    aux = _finish(extraction, collected)
    n = len(primals)

    def vjp_fn(cotangent: Any) -> tuple:
        g_leaves, g_ords = raw_vjp(cotangent)
        built = build_args(extraction.static, g_leaves, g_ords, range(n))
        return tuple(built[i] for i in range(n))

    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def vjp(
    f: Callable[..., Any] | None = None, *primals: Any, has_aux: bool = False,
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.vjp`` for functions of graph nodes: ``(out, vjp_fn)`` (``(out, vjp_fn, aux)`` with
    ``has_aux``); ``vjp_fn(cotangent)`` returns one cotangent per primal, shaped like it.

    ``nnx.vjp(f)`` / ``@nnx.vjp(...)`` without primals returns a function of the primals.

    Args:
      f: the function.
      *primals: its arguments; every array and Variable in them is differentiated.
      has_aux: ``f`` returns ``(out, aux)``; aux is returned last and not differentiated.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: must be False in graph mode; None: the current setting.
    """
    mode = resolve_mode(graph, graph_updates)
    _check_mode(mode, "vjp")
    if f is None:
        return lambda fn: vjp(fn, has_aux=has_aux, graph=mode.graph, graph_updates=mode.updates)
    reject_bound_method(f, "vjp")
    if not primals:
        return functools.wraps(f)(lambda *p: _vjp_call(f, p, has_aux, mode))
    return _vjp_call(f, primals, has_aux, mode)


def _jvp_call(
    f: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any], has_aux: bool,
    mode: Mode,
) -> tuple:
    if not isinstance(primals, tuple | list) or not isinstance(tangents, tuple | list):
        raise TypeError("nnx.jvp: primals and tangents must be tuples (one entry per argument)")
    if len(primals) != len(tangents):
        raise ValueError(
            f"nnx.jvp: got {len(primals)} primals but {len(tangents)} tangents; give one tangent "
            "per primal, shaped like it."
        )
    extraction = Extraction(list(primals), mode)
    t_leaves = [zero_cotangent(x) for x in extraction.leaves]
    t_ords = [zero_cotangent(x) for x in extraction.ordinary]
    for a, tangent in enumerate(tangents):
        leaves, ords = argument_tangent_leaves(extraction, a, tangent, mode, "nnx.jvp")
        for j, v in leaves.items():
            t_leaves[j] = v
        for j, v in ords.items():
            t_ords[j] = v
    out, t_out, collected = jax.jvp(
        _pure(f, extraction, has_aux, "jvp"),
        (extraction.leaf_values(), extraction.ordinary), (t_leaves, t_ords), has_aux=True,
    )
    aux = _finish(extraction, collected)
    return (out, t_out, aux) if has_aux else (out, t_out)


def jvp(
    f: Callable[..., Any] | None = None, primals: Sequence[Any] | None = None,
    tangents: Sequence[Any] | None = None, *, has_aux: bool = False,
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.jvp`` for functions of graph nodes: ``(out, tangent_out)`` (``(out, tangent_out,
    aux)`` with ``has_aux``).

    ``nnx.jvp(f)`` / ``@nnx.jvp(...)`` without primals returns a function of
    ``(primals, tangents)``.

    Args:
      f: the function.
      primals: a tuple of its arguments.
      tangents: a tuple with one tangent per primal, shaped like it (for a Module e.g.
        ``jax.tree.map(jnp.ones_like, module)``); None for a primal means zero tangents.
      has_aux: ``f`` returns ``(out, aux)``; aux is returned last and not differentiated.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: must be False in graph mode; None: the current setting.
    """
    mode = resolve_mode(graph, graph_updates)
    _check_mode(mode, "jvp")
    if f is None:
        return lambda fn: jvp(fn, has_aux=has_aux, graph=mode.graph, graph_updates=mode.updates)
    reject_bound_method(f, "jvp")
    if primals is None or tangents is None:
        return functools.wraps(f)(lambda p, t: _jvp_call(f, p, t, has_aux, mode))
    return _jvp_call(f, primals, tangents, has_aux, mode)


__all__ = ["jvp", "vjp"]
