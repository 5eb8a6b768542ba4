"""Recurrent layers: LSTM, GRU and simple cells, ``RNN`` (a scan over time) and ``Bidirectional``.

A cell maps ``(carry, inputs) -> (new_carry, output)`` for one time step; ``RNN`` scans a cell
over the time axis with ``jax.lax.scan``, carrying the cell's non-parameter state so updates
made inside the cell are written back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnx.graph import merge, split, update
from nnx.module import Module
from nnx.nn import initializers
from nnx.nn.dtypes import check_last_axis
from nnx.nn.linear import Linear, default_kernel_init
from nnx.rnglib import Rngs
from nnx.variablelib import Param

Array = jax.Array
Carry = Any

default_recurrent_kernel_init = initializers.orthogonal()
default_bias_init = initializers.zeros


def _zeros(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    return jnp.zeros(shape, dtype)


def _stacked_init(init: initializers.Initializer, parts: int) -> initializers.Initializer:
    """An initializer that fills ``parts`` blocks of the last axis independently."""

    def stacked(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        block = (*shape[:-1], shape[-1] // parts)
        keys = jax.random.split(key, parts)
        return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)

    return stacked


class RNNCellBase(Module):
    """Base class of recurrent cells: ``__call__(carry, inputs)`` and ``initialize_carry``."""

    in_features: int
    hidden_features: int

    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(carry, inputs)")

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Rngs | None = None) -> Carry:
        """The initial carry for inputs of shape ``(batch..., in_features)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement initialize_carry")

    @property
    def num_feature_axes(self) -> int:
        """How many trailing input axes are features (1 for dense cells)."""
        return 1

    def _carry_key(self, rngs: Rngs | None) -> Array:
        if rngs is not None:
            return rngs["carry"]()
        # carry_init defaults to zeros, which ignores the key; a fixed key keeps this pure.
        return jax.random.key(0)

    def _check_inputs(self, inputs: Array) -> None:
        check_last_axis(type(self).__name__, inputs, self.in_features)

    def _carry_array(self, key: Array, input_shape: tuple[int, ...]) -> Array:
        batch_dims = tuple(input_shape)[: len(input_shape) - self.num_feature_axes]
        return self.carry_init(key, (*batch_dims, self.hidden_features), self.param_dtype)


class _DenseCell(RNNCellBase):
    """A cell built from ``Linear`` layers declared in ``_layers``; the cells share this
    constructor (its arguments are documented in ``LSTMCell``).

    Each ``_layers`` entry is ``(attribute, reads, has_bias)``: ``reads`` is ``"inputs"`` (an
    ``in_features -> hidden`` layer with ``kernel_init``) or ``"hidden"`` (``hidden -> hidden``
    with ``recurrent_kernel_init``). With ``_fused_gates = n`` each layer computes ``n`` gates
    at once: its output is ``n * hidden_features`` wide and each block is initialized
    independently. The layers are created in the order listed (which fixes the random keys).
    The carry is ``h``; ``LSTMCell`` overrides ``initialize_carry`` for its ``(c, h)``.
    """

    _layers: tuple[tuple[str, str, bool], ...] = ()
    _fused_gates = 1

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable[[Array], Array] | None = jax.nn.sigmoid,
        activation_fn: Callable[[Array], Array] = jnp.tanh,
        kernel_init: initializers.Initializer = default_kernel_init,
        recurrent_kernel_init: initializers.Initializer = default_recurrent_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: initializers.Initializer | None = None,
        rngs: Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        if gate_fn is not None:  # SimpleCell has no gates
            self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.carry_init = carry_init or _zeros
        sources = {
            "inputs": (in_features, kernel_init),
            "hidden": (hidden_features, recurrent_kernel_init),
        }
        for name, reads, has_bias in self._layers:
            n_in, init = sources[reads]
            if self._fused_gates > 1:
                init = _stacked_init(init, self._fused_gates)
            layer = Linear(
                n_in, self._fused_gates * hidden_features, use_bias=has_bias, kernel_init=init,
                bias_init=bias_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            )
            setattr(self, name, layer)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Rngs | None = None) -> Array:
        """``h`` of shape ``(batch..., hidden_features)`` (zeros by default)."""
        return self._carry_array(self._carry_key(rngs), input_shape)


class LSTMCell(_DenseCell):
    """Long short-term memory cell; the carry is ``(c, h)`` and the output is ``h``.

    ``i = gate(W_ii x + W_hi h + b_i)``, ``f = gate(W_if x + W_hf h + b_f)``,
    ``g = act(W_ig x + W_hg h + b_g)``, ``o = gate(W_io x + W_ho h + b_o)``,
    ``c' = f * c + i * g``, ``h' = o * act(c')``. Input kernels are ``ii, if_, ig, io``
    (no bias); recurrent kernels ``hi, hf, hg, ho`` carry the biases.

    Args:
      in_features: input feature size.
      hidden_features: size of ``c`` and ``h``.
      gate_fn: gate nonlinearity (sigmoid).
      activation_fn: cell nonlinearity (tanh).
      kernel_init: initializer of the input kernels.
      recurrent_kernel_init: initializer of the recurrent kernels (orthogonal).
      bias_init: initializer of the biases.
      dtype: computation dtype; None promotes.
      param_dtype: dtype of the parameters and the initial carry.
      carry_init: initializer of the carry (zeros).
      rngs: random streams for the parameters.
    """

    _layers = (
        ("ii", "inputs", False), ("if_", "inputs", False), ("ig", "inputs", False),
        ("io", "inputs", False), ("hi", "hidden", True), ("hf", "hidden", True),
        ("hg", "hidden", True), ("ho", "hidden", True),
    )

    def __call__(self, carry: tuple[Array, Array], inputs: Array) -> tuple[tuple[Array, Array], Array]:
        """One step: returns ``((c', h'), h')``."""
        self._check_inputs(inputs)
        c, h = carry
        i = self.gate_fn(self.ii(inputs) + self.hi(h))
        f = self.gate_fn(self.if_(inputs) + self.hf(h))
        g = self.activation_fn(self.ig(inputs) + self.hg(h))
        o = self.gate_fn(self.io(inputs) + self.ho(h))
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: Rngs | None = None
    ) -> tuple[Array, Array]:
        """``(c, h)`` of shape ``(batch..., hidden_features)`` each (zeros by default)."""
        key_c, key_h = jax.random.split(self._carry_key(rngs))
        return self._carry_array(key_c, input_shape), self._carry_array(key_h, input_shape)


class OptimizedLSTMCell(LSTMCell):
    """An LSTM cell computing the four gates with two fused matmuls.

    Same equations and carry as ``LSTMCell``; the parameters are ``dense_i`` (kernel
    ``(in, 4 * hidden)``, no bias) and ``dense_h`` (kernel ``(hidden, 4 * hidden)`` and bias),
    with gate blocks in the order ``i, f, g, o``, each initialized independently.
    Takes the same arguments as ``LSTMCell``.
    """

    _layers = (("dense_i", "inputs", False), ("dense_h", "hidden", True))
    _fused_gates = 4

    def __call__(self, carry: tuple[Array, Array], inputs: Array) -> tuple[tuple[Array, Array], Array]:
        """One step: returns ``((c', h'), h')``."""
        self._check_inputs(inputs)
        c, h = carry
        y = self.dense_i(inputs) + self.dense_h(h)
        i, f, g, o = jnp.split(y, 4, axis=-1)
        new_c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
        new_h = self.gate_fn(o) * self.activation_fn(new_c)
        return (new_c, new_h), new_h


class GRUCell(_DenseCell):
    """Gated recurrent unit; the carry and the output are ``h``.

    ``r = gate(W_ir x + b_ir + W_hr h)``, ``z = gate(W_iz x + b_iz + W_hz h)``,
    ``n = act(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Input kernels ``ir, iz, in_`` have biases; recurrent kernels ``hr, hz`` do not, ``hn`` does.

    Args:
      in_features, hidden_features, gate_fn, activation_fn, kernel_init,
      recurrent_kernel_init, bias_init, dtype, param_dtype, carry_init, rngs: as in ``LSTMCell``.
    """

    _layers = (
        ("ir", "inputs", True), ("iz", "inputs", True), ("in_", "inputs", True),
        ("hr", "hidden", False), ("hz", "hidden", False), ("hn", "hidden", True),
    )

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        """One step: returns ``(h', h')``."""
        self._check_inputs(inputs)
        h = carry
        r = self.gate_fn(self.ir(inputs) + self.hr(h))
        z = self.gate_fn(self.iz(inputs) + self.hz(h))
        n = self.activation_fn(self.in_(inputs) + r * self.hn(h))
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


class SimpleCell(_DenseCell):
    """An Elman cell: ``h' = act(W_i x + b + W_h h)``; the carry and the output are ``h``.

    Parameters: ``dense_i`` (kernel and bias) and ``dense_h`` (recurrent kernel, no bias).

    Args:
      in_features, hidden_features, activation_fn, kernel_init, recurrent_kernel_init,
      bias_init, dtype, param_dtype, carry_init, rngs: as in ``LSTMCell``.
    """

    _layers = (("dense_i", "inputs", True), ("dense_h", "hidden", False))

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation_fn: Callable[[Array], Array] = jnp.tanh,
        kernel_init: initializers.Initializer = default_kernel_init,
        recurrent_kernel_init: initializers.Initializer = default_recurrent_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: initializers.Initializer | None = None,
        rngs: Rngs,
    ):
        super().__init__(
            in_features, hidden_features, gate_fn=None, activation_fn=activation_fn,
            kernel_init=kernel_init, recurrent_kernel_init=recurrent_kernel_init,
            bias_init=bias_init, dtype=dtype, param_dtype=param_dtype, carry_init=carry_init,
            rngs=rngs,
        )

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        """One step: returns ``(h', h')``."""
        self._check_inputs(inputs)
        new_h = self.activation_fn(self.dense_i(inputs) + self.dense_h(carry))
        return new_h, new_h


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
    ):
        self.cell = cell
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll

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
          rngs: streams for ``initialize_carry``.

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
            initial_carry = self.cell.initialize_carry(xs.shape[1:], rngs)
        if reverse:
            xs = _flip_sequences(xs, seq_lengths)

        graphdef, params, rest = split(self.cell, Param, ...)
        param_values = params.to_pure_dict()

        def step(loop: tuple[Any, Carry, Array], x: Array) -> tuple[tuple[Any, Carry, Array], Any]:
            cell_state, carry, t = loop
            cell = merge(graphdef, param_values, cell_state)
            new_carry, y = cell(carry, x)
            if seq_lengths is not None:
                new_carry = _select(t < seq_lengths, new_carry, carry)
            _, _, new_state = split(cell, Param, ...)
            return (new_state, new_carry, t + 1), y

        start = (rest, initial_carry, jnp.array(0, jnp.int32))
        (final_state, carry, _), ys = jax.lax.scan(step, start, xs, unroll=self.unroll)
        update(self.cell, final_state)
        if reverse and keep_order:
            ys = jax.tree.map(lambda y: _flip_sequences(y, seq_lengths), ys)
        outputs = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
        return (carry, outputs) if return_carry else outputs


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
    "SimpleCell",
]
