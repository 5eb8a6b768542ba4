"""``Sequential``: call a chain of layers and functions, each on the previous one's output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnx.module import Module


class Sequential(Module):
    """Apply callables in order: the first gets the call's arguments, each next one the output.

    ``Sequential(a, b, c)`` and ``Sequential([a, b, c])`` are the same. Modules and plain
    functions (``nnx.relu``, lambdas) may be mixed; they are stored in ``self.layers``, so the
    state of the i-th layer sits under ``layers/i``. An output is passed on as one argument
    (a tuple is not unpacked).

    Args:
      *fns: the callables, or a single list of them.
    """

    def __init__(self, *fns: Callable[..., Any]):
        if len(fns) == 1 and isinstance(fns[0], list | tuple):
            fns = tuple(fns[0])
        for i, f in enumerate(fns):
            if not callable(f):
                raise TypeError(
                    f"Sequential: layer {i} is not callable, got {type(f).__name__}"
                )
        self.layers = list(fns)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the chain. With no layers it is the identity: the single argument, the tuple of
        several, else the dict of keyword arguments, or None when called with nothing."""
        if not self.layers:
            if len(args) == 1:
                return args[0]
            return args or kwargs or None
        output = self.layers[0](*args, **kwargs)
        for f in self.layers[1:]:
            output = f(output)
        return output
