"""Recurrent layers: ``RNN`` (a scan of a cell over time) and ``Bidirectional``; the cells
(``LSTMCell``, ``GRUCell``...) live in ``cells`` and are re-exported here.

A cell maps ``(carry, inputs) -> (new_carry, output)`` for one time step; ``RNN`` scans a cell
over the time axis with ``jax.lax.scan``, carrying the cell's non-parameter state so updates
made inside the cell are written back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnx.filterlib import All, to_predicate
from nnx.graph import iter_graph, merge, split, update
from nnx.module import Module
from nnx.nn.cells import (
    GRUCell,
    LSTMCell,
    OptimizedLSTMCell,
    RNNCellBase,
    SimpleCell,
    modified_orthogonal,
)
from nnx.rnglib import Rngs, RngStream
from nnx.variablelib import Param, RngState

Array = jax.Array
Carry = Any


def _flip_sequences(xs: Array, seq_lengths: Array | None) -> Array:
    """Reverse time-major ``xs`` (``(T, batch..., ...)``) within each sequence's length;
    entries past a sequence's length stay where they are."""
    if seq_lengths is None:
        return jnp.flip(xs, axis=0)
    steps = xs.shape[0]
    lengths = jnp.asarray(seq_lengths)
    t = jnp.arange(steps).reshape((steps,) + (1,) * lengths.ndim)
    index = jnp.where(t < lengths, lengths - 1 - t, t)  # (T, batch...)
    index = index.reshape(index.shape + (1,) * (xs.ndim - index.ndim))
    index = jnp.broadcast_to(index, xs.shape)
    return jnp.take_along_axis(xs, index, axis=0)


def _select(keep: Array, new: Any, old: Any) -> Any:
    def choose(n: Array, o: Array) -> Array:
        k = keep.reshape(keep.shape + (1,) * (jnp.ndim(n) - keep.ndim))
        return jnp.where(k, n, o)

    return jax.tree.map(choose, new, old)


class RNN(Module):
    """Apply a recurrent cell over the time axis of the inputs (a ``jax.lax.scan``).

    Args:
      cell: an ``RNNCellBase`` (``LSTMCell``, ``GRUCell``...).
      time_major: inputs are ``(time, batch..., features)`` instead of
        ``(batch..., time, features)``.
      return_carry: also return the final carry, as ``(carry, outputs)``.
      reverse: run from the last time step to the first.
      keep_order: with ``reverse``, return the outputs in the original time order.
      unroll: how many scan steps to unroll.
      broadcast_rngs: a filter of the cell's RNG streams (e.g. ``'recurrent_dropout'``) that
        give the same keys at every time step (one mask for the whole sequence); each call of
        the RNN advances such a stream once.
      rngs: the source of ``initialize_carry``'s keys when no initial carry is given: True (the
        default) keeps a ``carry`` stream of seed 0, an ``nnx.Rngs`` forks its ``carry``
        stream, False keeps none (a fixed key).

    Example::

      >>> rnn = RNN(LSTMCell(3, 8, rngs=nnx.Rngs(0)))
      >>> rnn(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        cell: RNNCellBase,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        broadcast_rngs: Any = None,
        rngs: Rngs | RngStream | bool = True,
    ):
        self.cell = cell
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.broadcast_rngs = broadcast_rngs
        if rngs is True:
            self.rngs = RngStream(0, tag="carry")
        elif isinstance(rngs, Rngs):
            self.rngs = rngs["carry"].fork()
        elif isinstance(rngs, RngStream):
            self.rngs = rngs.fork()
        elif rngs is False or rngs is None:
            self.rngs = None
        else:
            raise TypeError(
                f"RNN: rngs must be True, False, an nnx.Rngs or an nnx.RngStream, got "
                f"{type(rngs).__name__}"
            )

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: Rngs | None = None,
    ) -> Any:
        """Scan the cell over time.

        Args:
          inputs: ``(batch..., time, features...)`` (or time-major).
          initial_carry: the starting carry (default ``cell.initialize_carry``).
          seq_lengths: ``(batch...)`` integer lengths; steps past a sequence's length do not
            change its carry (so the final carry is the one at its last valid step).
          return_carry, time_major, reverse, keep_order: override the attributes.
          rngs: streams for ``initialize_carry`` (default: the RNN's own stream).

        Returns:
          The outputs ``(batch..., time, out...)``, or ``(carry, outputs)`` with return_carry.
        """
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order

        inputs = jnp.asarray(inputs)
        n_features = self.cell.num_feature_axes
        if inputs.ndim < n_features + 1:
            raise ValueError(
                f"RNN expects inputs with a time axis and {n_features} feature axis(es), got "
                f"shape {inputs.shape}."
            )
        time_axis = 0 if time_major else inputs.ndim - n_features - 1
        xs = jnp.moveaxis(inputs, time_axis, 0)  # (T, batch..., features...)
        if seq_lengths is not None:
            seq_lengths = jnp.asarray(seq_lengths)
            batch_shape = xs.shape[1 : xs.ndim - n_features]
            if seq_lengths.shape != batch_shape:
                raise ValueError(
                    f"RNN: seq_lengths must have the batch shape {batch_shape}, got "
                    f"{seq_lengths.shape}."
                )
        if initial_carry is None:
            initial_carry = self.cell.initialize_carry(
                xs.shape[1:], self.rngs if rngs is None else rngs
            )
        if reverse:
            xs = _flip_sequences(xs, seq_lengths)

        broadcast = All(RngState, to_predicate(self.broadcast_rngs))
        saved = _fix_streams(self.cell, broadcast)
        try:
            carry, ys = self._scan(xs, initial_carry, seq_lengths, broadcast)
        finally:
            for stream, key, count in saved:
                stream.key.value, stream.count.value = key, count
        if reverse and keep_order:
            ys = jax.tree.map(lambda y: _flip_sequences(y, seq_lengths), ys)
        outputs = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
        return (carry, outputs) if return_carry else outputs

    def _scan(
        self, xs: Array, carry: Carry, seq_lengths: Array | None, broadcast: Any
    ) -> tuple[Carry, Any]:
        """``jax.lax.scan`` of the cell over time-major ``xs``: the Params and the ``broadcast``
        RNG state are the same at every step; the rest of the cell's state is carried and
        written back to the cell at the end."""
        graphdef, params, fixed, rest = split(self.cell, Param, broadcast, ...)
        params, fixed = params.to_pure_dict(), fixed.to_pure_dict()

        def step(loop: tuple[Any, Carry, Array], x: Array) -> tuple[tuple[Any, Carry, Array], Any]:
            cell_state, carry, t = loop
            cell = merge(graphdef, params, fixed, cell_state)
            new_carry, y = cell(carry, x)
            if seq_lengths is not None:
                new_carry = _select(t < seq_lengths, new_carry, carry)
            _, _, _, new_state = split(cell, Param, broadcast, ...)
            return (new_state, new_carry, t + 1), y

        start = (rest, carry, jnp.array(0, jnp.int32))
        (final_state, carry, _), ys = jax.lax.scan(step, start, xs, unroll=self.unroll)
        update(self.cell, final_state)
        return carry, ys


def _fix_streams(cell: Module, broadcast: Any) -> list[tuple[RngStream, Array, Array]]:
    """Prepare the streams of ``cell`` that ``broadcast`` selects for a scan in which they do
    not change: each is advanced once and gets, until restored, a fresh key and a zero count.

    Returns ``(stream, key, count)`` triples to restore after the scan (the count advanced).
    """
    saved = []
    for path, node in iter_graph(cell):
        if isinstance(node, RngStream) and broadcast((*path, "key"), node.key):
            key = node()
            saved.append((node, node.key.value, node.count.value))
            node.key.value = key
            node.count.value = jnp.zeros_like(node.count.value)
    return saved


def _concatenate(a: Array, b: Array) -> Array:
    return jnp.concatenate([a, b], axis=-1)


class Bidirectional(Module):
    """Run one RNN forward and another backward in time and merge their outputs.

    Args:
      forward_rnn: an ``RNN`` run in time order.
      backward_rnn: an ``RNN`` run in reverse (its outputs are put back in time order).
      merge_fn: combines the two outputs (default: concatenate the feature axes).
      time_major: inputs are time-major.
      return_carry: also return ``(forward_carry, backward_carry)``.
    """

    def __init__(
        self,
        forward_rnn: RNN,
        backward_rnn: RNN,
        *,
        merge_fn: Callable[[Array, Array], Array] = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
    ):
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = time_major
        self.return_carry = return_carry

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: tuple[Carry, Carry] | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        rngs: Rngs | None = None,
    ) -> Any:
        """Outputs ``merge_fn(forward, backward)``, or ``((carry_f, carry_b), outputs)``.

        Args:
          inputs: ``(batch..., time, features)`` (or time-major).
          initial_carry: ``(forward_carry, backward_carry)``; default from the cells.
          seq_lengths: per-sequence lengths, as in ``RNN``.
          return_carry, time_major: override the attributes.
          rngs: streams for the carries' initialization.
        """
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        carry_f, carry_b = (None, None) if initial_carry is None else initial_carry
        carry_f, out_f = self.forward_rnn(
            inputs, initial_carry=carry_f, seq_lengths=seq_lengths, return_carry=True,
            time_major=time_major, reverse=False, rngs=rngs,
        )
        carry_b, out_b = self.backward_rnn(
            inputs, initial_carry=carry_b, seq_lengths=seq_lengths, return_carry=True,
            time_major=time_major, reverse=True, keep_order=True, rngs=rngs,
        )
        outputs = jax.tree.map(self.merge_fn, out_f, out_b)
        return ((carry_f, carry_b), outputs) if return_carry else outputs


__all__ = [
    "Bidirectional", "GRUCell", "LSTMCell", "OptimizedLSTMCell", "RNN", "RNNCellBase",
    "SimpleCell", "modified_orthogonal",
]
