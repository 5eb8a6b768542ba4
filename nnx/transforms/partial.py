"""``nnx.jit_partial`` and ``nnx.cached_partial``: ``nnx.jit`` functions with their first
arguments (a model, an optimizer) given once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from nnx._modes import resolve as resolve_mode
from nnx.transforms.jit import JitWrapped, Lowered, jit
from nnx.transforms.lift import Extraction


class PartialJit:
    """``nnx.jit_partial(f, *partial_args)``: ``nnx.jit(f)`` with its first arguments given."""

    def __init__(self, wrapped: JitWrapped, partial_args: tuple):
        functools.update_wrapper(self, wrapped.fun)
        self.wrapped, self.partial_args = wrapped, partial_args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*self.partial_args, *args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        lowered = self.wrapped.lower(*self.partial_args, *args, **kwargs)
        return _PartialLowered(lowered, self.partial_args)


class _PartialLowered:
    def __init__(self, lowered: Lowered, partial_args: tuple):
        self._lowered, self._partial_args = lowered, partial_args

    def compile(self, *args: Any, **kwargs: Any) -> Any:
        return functools.partial(self._lowered.compile(*args, **kwargs), *self._partial_args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lowered, name)


def jit_partial(fun: Callable[..., Any], *partial_args: Any, **jit_options: Any) -> PartialJit:
    """``nnx.jit(fun, **jit_options)`` with ``partial_args`` as its first arguments: calls take
    the remaining ones. ``in_shardings`` and argument numbers count the partial arguments too.
    In tree mode the partial arguments are checked for aliasing now (a Variable given twice
    raises).

    Args:
      fun: the function.
      *partial_args: its first arguments (Modules, Optimizers, arrays...).
      **jit_options: as for ``nnx.jit`` (``graph``, ``graph_updates``, ``in_shardings``...).
    """
    wrapped = jit(fun, **jit_options)
    if not wrapped.mode.graph:
        Extraction(list(partial_args), wrapped.mode)  # raises on aliasing
    return PartialJit(wrapped, partial_args)


class CachedPartial:
    """``nnx.cached_partial(f, *cached_args)``: ``f`` with its first arguments given."""

    def __init__(self, fun: Callable[..., Any], cached_args: tuple):
        functools.update_wrapper(self, fun)
        self.fun, self.cached_args = fun, cached_args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fun(*self.cached_args, *args, **kwargs)


def cached_partial(
    fun: Callable[..., Any], *cached_args: Any, graph: bool | None = None,
    graph_updates: bool | None = None,
) -> CachedPartial:
    """``fun`` (usually an ``nnx.jit`` function) with ``cached_args`` (a model, an optimizer)
    as its first arguments, for a training loop that calls it with the same objects each step.

    ``nnx.jit`` already binds the objects it was called with and skips flattening them again
    while their structure is unchanged, so this is a partial application that keeps Flax's
    spelling and its contract: graph mode with graph updates only.

    Args:
      fun: the function.
      *cached_args: its first arguments.
    """
    if not resolve_mode(graph, graph_updates).full:
        raise ValueError(
            "cached_partial is a graph-mode-only API and requires graph_updates=True; in tree "
            "mode or with graph_updates=False use nnx.jit_partial."
        )
    return CachedPartial(fun, cached_args)


__all__ = ["CachedPartial", "PartialJit", "cached_partial", "jit_partial"]
