"""Recurrent cells: ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` and ``SimpleCell``.

A cell maps ``(carry, inputs) -> (new_carry, output)`` for one time step; ``nnx.RNN`` (in
``recurrent``) scans one over a sequence.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnx.module import Module
from nnx.nn import dtypes, initializers
from nnx.nn._eager_init import init_value
from nnx.nn._params import NO_METADATA
from nnx.nn.dtypes import check_last_axis
from nnx.nn.linear import Linear, default_kernel_init
from nnx.rnglib import Rngs, RngStream

Array = jax.Array
Carry = Any
Metadata = Mapping[str, Any]


def modified_orthogonal(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """``initializers.orthogonal()`` computed in at least float32 and cast to ``dtype``.

    The orthogonal initializer needs a QR decomposition, which has no float16/bfloat16 kernel;
    this makes half-precision recurrent kernels possible.
    """
    compute = jnp.promote_types(dtype, jnp.float32)
    return initializers.orthogonal()(key, shape, compute).astype(dtype)


default_recurrent_kernel_init = modified_orthogonal
default_bias_init = initializers.zeros


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

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None = None,
        carry_init: initializers.Initializer | None = None,
    ) -> Carry:
        """The initial carry for inputs of shape ``(batch..., in_features)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement initialize_carry")

    @property
    def num_feature_axes(self) -> int:
        """How many trailing input axes are features (1 for dense cells)."""
        return 1

    def _carry_stream(self, rngs: Rngs | RngStream | None) -> Callable[[], Array]:
        """Where the carry initializer's keys come from: ``rngs`` (its ``carry`` stream), else
        the cell's own stream (``keep_rngs=True``), else a fixed key (the default zeros
        initializer ignores it)."""
        rngs = getattr(self, "rngs", None) if rngs is None else rngs
        if isinstance(rngs, Rngs):
            return rngs["carry"]
        if isinstance(rngs, RngStream):
            return rngs
        if rngs is None:
            return lambda: jax.random.key(0)
        raise TypeError(
            f"{type(self).__name__}.initialize_carry: rngs must be an nnx.Rngs, an "
            f"nnx.RngStream or None, got {type(rngs).__name__}"
        )

    def _check_inputs(self, inputs: Array) -> None:
        check_last_axis(type(self).__name__, inputs, self.in_features)

    def _carry_arrays(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None,
        carry_init: initializers.Initializer | None,
        count: int,
    ) -> list[Array]:
        """``count`` carry arrays of shape ``(batch..., hidden_features)``, each from its own key
        (``carry_init`` or the constructor's, zeros by default)."""
        init = carry_init or self.carry_init or initializers.zeros
        stream = self._carry_stream(rngs)
        batch_dims = tuple(input_shape)[: len(input_shape) - self.num_feature_axes]
        shape = (*batch_dims, self.hidden_features)
        return [init_value(init, stream(), shape, self.param_dtype) for _ in range(count)]


class _DenseCell(RNNCellBase):
    """A cell built from ``Linear`` layers declared in ``_layers``; the cells share this
    constructor (its arguments are documented in ``LSTMCell``).

    Each ``_layers`` entry is ``(attribute, reads, has_bias)``: ``reads`` is ``"inputs"`` (an
    ``in_features -> hidden`` layer with ``kernel_init`` and ``kernel_metadata``) or
    ``"hidden"`` (``hidden -> hidden`` with ``recurrent_kernel_init`` and
    ``recurrent_kernel_metadata``). With ``_fused_gates = n`` each layer computes ``n`` gates
    at once: its output is ``n * hidden_features`` wide and each block is initialized
    independently. The layers are created in the order listed (which fixes the random keys).
    The carry is ``h``; ``LSTMCell`` overrides ``initialize_carry`` for its ``(c, h)``.
    """

    _layers: tuple[tuple[str, str, bool], ...] = ()
    _fused_gates = 1
    _carry_arrays_count = 1

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
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Metadata = NO_METADATA,
        recurrent_kernel_metadata: Metadata = NO_METADATA,
        bias_metadata: Metadata = NO_METADATA,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        if gate_fn is not None:  # SimpleCell has no gates
            self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype
        self.carry_init = carry_init
        if keep_rngs:
            warnings.warn(
                f"{type(self).__name__}: keep_rngs is deprecated (as in Flax); pass rngs to "
                "initialize_carry instead",
                DeprecationWarning,
                stacklevel=2,
            )
        self.rngs = rngs["carry"].fork() if keep_rngs else None
        sources = {
            "inputs": (in_features, kernel_init, kernel_metadata),
            "hidden": (hidden_features, recurrent_kernel_init, recurrent_kernel_metadata),
        }
        for name, reads, has_bias in self._layers:
            n_in, init, metadata = sources[reads]
            if self._fused_gates > 1:
                init = _stacked_init(init, self._fused_gates)
            layer = Linear(
                n_in, self._fused_gates * hidden_features, use_bias=has_bias, kernel_init=init,
                bias_init=bias_init, dtype=dtype, param_dtype=param_dtype,
                promote_dtype=promote_dtype, rngs=rngs, kernel_metadata=metadata,
                bias_metadata=bias_metadata if has_bias else NO_METADATA,
            )
            setattr(self, name, layer)

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | RngStream | None = None,
        carry_init: initializers.Initializer | None = None,
    ) -> Any:
        """The initial carry for inputs of shape ``(batch..., in_features)``: ``h`` (or
        ``(c, h)`` for the LSTM cells) of shape ``(batch..., hidden_features)``.

        Args:
          input_shape: the shape of one step's input.
          rngs: keys for ``carry_init`` (its ``carry`` stream); default: the cell's own stream
            (``keep_rngs=True``) or a fixed key.
          carry_init: the initializer (default: the constructor's ``carry_init``, else zeros).
        """
        arrays = self._carry_arrays(input_shape, rngs, carry_init, self._carry_arrays_count)
        return arrays[0] if len(arrays) == 1 else tuple(arrays)


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
      recurrent_kernel_init: initializer of the recurrent kernels (orthogonal, computed in
        float32 so that half-precision ``param_dtype`` works).
      bias_init: initializer of the biases.
      dtype: computation dtype; None promotes.
      param_dtype: dtype of the parameters and the initial carry.
      carry_init: default initializer of the carry (zeros); ``initialize_carry`` takes one too.
      promote_dtype: the ``promote_dtype`` of the cell's ``Linear`` layers.
      keep_rngs: (deprecated) keep a ``carry`` stream forked from ``rngs`` for
        ``initialize_carry``.
      rngs: random streams for the parameters.
      kernel_metadata: metadata of the input kernels.
      recurrent_kernel_metadata: metadata of the recurrent kernels.
      bias_metadata: metadata of the biases.
    """

    _layers = (
        ("ii", "inputs", False), ("if_", "inputs", False), ("ig", "inputs", False),
        ("io", "inputs", False), ("hi", "hidden", True), ("hf", "hidden", True),
        ("hg", "hidden", True), ("ho", "hidden", True),
    )
    _carry_arrays_count = 2

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
    ``n = act(W_in x + b_in + r * (W_hn h))``, ``h' = (1 - z) * n + z * h``.
    The input kernels are fused in ``dense_i`` (kernel ``(in, 3 * hidden)`` and bias, blocks
    ``r, z, n``) and the recurrent ones in ``dense_h`` (kernel ``(hidden, 3 * hidden)``, no
    bias), as in Flax 0.12; each block is initialized independently.

    Args:
      in_features, hidden_features, gate_fn, activation_fn, kernel_init,
      recurrent_kernel_init, bias_init, dtype, param_dtype, carry_init, promote_dtype,
      keep_rngs, rngs, kernel_metadata, recurrent_kernel_metadata, bias_metadata: as in
      ``LSTMCell`` (``bias_metadata`` applies to ``dense_i``'s bias).
    """

    _layers = (("dense_i", "inputs", True), ("dense_h", "hidden", False))
    _fused_gates = 3

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        """One step: returns ``(h', h')``."""
        self._check_inputs(inputs)
        h = carry
        x_r, x_z, x_n = jnp.split(self.dense_i(inputs), 3, axis=-1)
        h_r, h_z, h_n = jnp.split(self.dense_h(h), 3, axis=-1)
        r = self.gate_fn(x_r + h_r)
        z = self.gate_fn(x_z + h_z)
        n = self.activation_fn(x_n + r * h_n)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


class SimpleCell(_DenseCell):
    """An Elman cell: ``h' = act(W_i x + b + W_h h [+ h])``; the carry and the output are ``h``.

    Parameters: ``dense_h`` (recurrent kernel, no bias) and ``dense_i`` (kernel and bias),
    created in that order.

    Args:
      in_features, hidden_features, activation_fn, kernel_init, recurrent_kernel_init,
      bias_init, param_dtype, carry_init, promote_dtype, keep_rngs, rngs, kernel_metadata,
      recurrent_kernel_metadata, bias_metadata: as in ``LSTMCell``.
      dtype: computation dtype (float32 by default, as in Flax).
      residual: add ``h`` before the activation.
    """

    _layers = (("dense_h", "hidden", False), ("dense_i", "inputs", True))

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        carry_init: initializers.Initializer | None = None,
        residual: bool = False,
        activation_fn: Callable[[Array], Array] = jnp.tanh,
        kernel_init: initializers.Initializer = default_kernel_init,
        recurrent_kernel_init: initializers.Initializer = default_recurrent_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Metadata = NO_METADATA,
        recurrent_kernel_metadata: Metadata = NO_METADATA,
        bias_metadata: Metadata = NO_METADATA,
    ):
        super().__init__(
            in_features, hidden_features, gate_fn=None, activation_fn=activation_fn,
            kernel_init=kernel_init, recurrent_kernel_init=recurrent_kernel_init,
            bias_init=bias_init, dtype=dtype, param_dtype=param_dtype, carry_init=carry_init,
            promote_dtype=promote_dtype, keep_rngs=keep_rngs, rngs=rngs,
            kernel_metadata=kernel_metadata, recurrent_kernel_metadata=recurrent_kernel_metadata,
            bias_metadata=bias_metadata,
        )
        self.residual = residual

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        """One step: returns ``(h', h')``."""
        self._check_inputs(inputs)
        new_h = self.dense_i(inputs) + self.dense_h(carry)
        if self.residual:
            new_h = new_h + carry
        new_h = self.activation_fn(new_h)
        return new_h, new_h


__all__ = [
    "GRUCell", "LSTMCell", "OptimizedLSTMCell", "RNNCellBase", "SimpleCell", "modified_orthogonal",
]
