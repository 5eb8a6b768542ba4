"""EMA: an exponential moving average of a model's Variables, kept in Variables of its own."""

from __future__ import annotations

from typing import Any, TypeVar

import jax.numpy as jnp

from nnx._typing import Path, path_str
from nnx.graph import merge, split
from nnx.graph import state as graph_state
from nnx.object import Object
from nnx.statelib import State
from nnx.variablelib import Variable

M = TypeVar("M")


def _tracked(node: Any, only: Any) -> list[tuple[Path, Variable]]:
    pairs = graph_state(node, only).flat_state()
    for path, leaf in pairs:
        if not isinstance(leaf, Variable):
            raise TypeError(
                f"EMA tracks Variables only, got a {type(leaf).__name__} at '{path_str(path)}'. "
                "Select Variables with the `only` filter (e.g. only=nnx.Param)."
            )
    return pairs


def _averaged(value: Any) -> bool:
    """Whether a value is averaged: floating-point arrays are; counters and RNG keys follow the
    model instead (their average means nothing)."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


class EMA(Object):
    """An exponential moving average of the Variables of ``params`` (a model, usually).

    ``ema.params`` is a State of copies of the tracked Variables; ``ema.update(model)`` moves
    each towards the model's current value, ``ema = decay * ema + (1 - decay) * new``
    (floating-point values; integer counters and RNG keys take the new value).
    ``ema.apply_to(model)`` is a model that uses the EMA's Variables (shared, so it follows
    later updates) and the model's own for the rest. EMA is a graph node: pass it to
    ``nnx.jit`` with the model.

    Args:
      params: the model (or other graph node / State) whose Variables are tracked.
      decay: the weight of the old average in each update, in [0, 1].
      only: a filter selecting the tracked Variables (default: all of them).

    Example::

      >>> ema = nnx.EMA(model, decay=0.9)
      >>> ema_model = ema.apply_to(model)   # evaluate with the averaged weights
      >>> ema.update(model)                 # after each optimizer step
    """

    def __init__(self, params: Any, decay: float, *, only: Any = ...):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}.")
        self.decay = decay
        self.only = only
        self.params = State.from_flat_path(
            [(path, var.copy(jnp.copy(var.get_raw_value()))) for path, var in _tracked(params, only)]
        )

    @property
    def filter(self) -> Any:
        """The ``only`` filter (Flax's attribute name)."""
        return self.only

    def update(self, updates: Any) -> None:
        """Move every tracked average towards its value in ``updates`` (a model or State).

        Args:
          updates: a node with the structure of the ``params`` given at construction.
        """
        new = dict(_tracked(updates, self.only))
        for path, average in self.params.flat_state():
            if path not in new:
                raise KeyError(
                    f"EMA.update: the given {type(updates).__name__} has no Variable at "
                    f"'{path_str(path)}' (only={self.only!r}); pass the model the EMA was made from."
                )
            value = new[path].get_raw_value()
            if _averaged(value):
                value = self.decay * average.get_raw_value() + (1.0 - self.decay) * value
            average.set_raw_value(value)

    def apply_to(self, model: M) -> M:
        """A new ``model`` whose tracked Variables are the EMA's (the others are the model's).

        Args:
          model: a model with the structure of the one the EMA was made from.
        """
        graphdef, state = split(model)
        return merge(graphdef, State.merge(state, self.params))


__all__ = ["EMA"]
