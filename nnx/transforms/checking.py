"""``nnx.checkify`` and ``nnx.make_jaxpr``: inspecting a function of graph nodes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental import checkify as checkify_lib

from nnx._modes import resolve as resolve_mode
from nnx.transforms.lift import (
    Extraction,
    apply,
    collect,
    full_leaf_values,
    rebuild,
    reject_bound_method,
)


def checkify(
    f: Callable[..., Any],
    errors: frozenset = checkify_lib.user_checks,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable[..., tuple[Any, Any]]:
    """``jax.experimental.checkify.checkify`` for functions of graph nodes: the result returns
    ``(error, out)``, and the updates ``f`` makes to its arguments reach the caller's objects.

    Args:
      f: the function to check.
      errors: the checks to enable (e.g. ``checkify.float_checks``).
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: carry structure changes out (True) or only new values; None: the setting.
    """
    reject_bound_method(f, "checkify")
    mode = resolve_mode(graph, graph_updates)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        extraction = Extraction([*args, kwargs], mode)
        static = extraction.static
        values = extraction.leaf_values()

        def pure(vals: list, ords: list) -> tuple:
            a, u, inner = rebuild(static, vals, ords)
            *pos, kw = a
            return collect(static, inner, u, f(*pos, **kw), vals)

        error, (new_vals, out_ord, box) = checkify_lib.checkify(pure, errors)(
            values, extraction.ordinary
        )
        return error, apply(extraction, box, full_leaf_values(box, new_vals, values), out_ord)

    return wrapper


def make_jaxpr(
    f: Callable[..., Any] | None = None,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    static_argnums: int | Sequence[int] = (),
    return_shape: bool = False,
) -> Any:
    """``jax.make_jaxpr`` for functions of graph nodes: the jaxpr of ``f`` on its arguments'
    arrays and Variable values (Variables in the order the graph is walked). Nothing is
    written back; graph updates are not supported.

    Args:
      f: the function; usable as ``@nnx.make_jaxpr(...)``.
      graph: graph mode (True) or tree mode (False); None: the current setting.
      graph_updates: must be False in graph mode; None: the current setting.
      static_argnums: positional arguments passed as they are (hashable, not traced).
      return_shape: also return the output's shapes, as ``jax.make_jaxpr`` does.
    """
    mode = resolve_mode(graph, graph_updates)
    if mode.updates:
        raise ValueError(
            "nnx.make_jaxpr does not support graph_updates=True. Pass graph_updates=False "
            "(or graph=False)."
        )
    if f is None:
        return lambda fn: make_jaxpr(
            fn, graph=mode.graph, graph_updates=False, static_argnums=static_argnums,
            return_shape=return_shape,
        )
    reject_bound_method(f, "make_jaxpr")
    static_set = {static_argnums} if isinstance(static_argnums, int) else set(static_argnums)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fixed = {i % len(args): args[i] for i in static_set if -len(args) <= i < len(args)}
        traced = [x for i, x in enumerate(args) if i not in fixed]
        extraction = Extraction([*traced, kwargs], mode)
        static = extraction.static

        def pure(vals: list, ords: list) -> Any:
            a, _, _ = rebuild(static, vals, ords)
            *pos, kw = a
            it = iter(pos)
            full = [fixed[i] if i in fixed else next(it) for i in range(len(args))]
            return f(*full, **kw)

        return jax.make_jaxpr(pure, return_shape=return_shape)(
            extraction.leaf_values(), extraction.ordinary
        )

    return wrapper


__all__ = ["checkify", "make_jaxpr"]
