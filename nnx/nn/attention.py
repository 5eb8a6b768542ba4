"""Attention: scaled dot-product attention, mask helpers, and ``MultiHeadAttention``.

Arrays follow the layout ``[batch..., length, num_heads, head_dim]``; masks and attention
weights are ``[batch..., num_heads, q_length, kv_length]`` (broadcastable).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nnx.module import Module
from nnx.nn import initializers
from nnx.nn.dtypes import check_last_axis, promote_dtype
from nnx.nn.linear import LinearGeneral, default_kernel_init
from nnx.nn.normalization import LayerNorm
from nnx.rnglib import Rngs, RngStream
from nnx.variablelib import Cache, Intermediate

Array = jax.Array


def _check_qkv(query: Array, key: Array, value: Array) -> None:
    if not query.ndim == key.ndim == value.ndim:
        raise ValueError(
            f"dot_product_attention: query, key and value must have the same rank, got shapes "
            f"{query.shape}, {key.shape} and {value.shape}."
        )
    if query.ndim < 3:
        raise ValueError(
            f"dot_product_attention expects [batch..., length, num_heads, head_dim] arrays, got "
            f"query of shape {query.shape}."
        )
    if query.shape[:-3] != key.shape[:-3] or key.shape[:-3] != value.shape[:-3]:
        raise ValueError(
            f"dot_product_attention: batch dims must match, got query {query.shape[:-3]}, key "
            f"{key.shape[:-3]}, value {value.shape[:-3]}."
        )
    if query.shape[-2] != key.shape[-2] or key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"dot_product_attention: num_heads must match, got query {query.shape[-2]}, key "
            f"{key.shape[-2]}, value {value.shape[-2]}."
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"dot_product_attention: query and key head_dim must match, got {query.shape[-1]} "
            f"and {key.shape[-1]}."
        )
    if key.shape[-3] != value.shape[-3]:
        raise ValueError(
            f"dot_product_attention: key and value lengths must match, got {key.shape[-3]} and "
            f"{value.shape[-3]}."
        )


def dot_product_attention_weights(
    query: Array,
    key: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
) -> Array:
    """Attention weights ``softmax(query @ key^T / sqrt(head_dim) + bias)`` with masking/dropout.

    Args:
      query: ``[batch..., q_length, num_heads, head_dim]``.
      key: ``[batch..., kv_length, num_heads, head_dim]``.
      bias: added to the logits; broadcastable to ``[batch..., num_heads, q_length, kv_length]``.
      mask: boolean (or 0/1) array of that shape; False entries get no weight.
      broadcast_dropout: share the dropout mask over batch and head dims.
      dropout_rng: key for dropout (needed when ``dropout_rate > 0`` and not deterministic).
      dropout_rate: probability of dropping a weight.
      deterministic: disable dropout.
      dtype: computation dtype; None promotes query and key.
      precision: passed to ``jnp.einsum``.
      module: when given, the weights are sown into it as ``Intermediate`` ``attention_weights``.

    Returns:
      Weights of shape ``[batch..., num_heads, q_length, kv_length]``.
    """
    query, key = promote_dtype((query, key), dtype=dtype)
    dtype = query.dtype
    depth = query.shape[-1]
    query = query / jnp.sqrt(jnp.asarray(depth, dtype))
    weights = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision)
    if bias is not None:
        weights = weights + bias
    if mask is not None:
        big_negative = jnp.finfo(dtype).min
        weights = jnp.where(jnp.asarray(mask, bool), weights, big_negative)
    weights = jax.nn.softmax(weights, axis=-1).astype(dtype)
    if module is not None:
        module.sow(Intermediate, "attention_weights", weights)
    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError(
                f"dot_product_attention: dropout_rate={dropout_rate} with deterministic=False "
                "needs a dropout_rng."
            )
        keep_prob = 1.0 - dropout_rate
        if broadcast_dropout:
            shape = (1,) * (key.ndim - 2) + weights.shape[-2:]
        else:
            shape = weights.shape
        keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))
    return weights


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    *,
    dtype: Any = None,
    precision: Any = None,
    **weights_options: Any,
) -> Array:
    """Scaled dot-product attention: ``softmax(q k^T / sqrt(d) + bias, masked) v``.

    Args:
      query: ``[batch..., q_length, num_heads, head_dim]``.
      key: ``[batch..., kv_length, num_heads, head_dim]``.
      value: ``[batch..., kv_length, num_heads, v_head_dim]``.
      bias, mask: as in ``dot_product_attention_weights``.
      dtype: computation dtype; None promotes query, key and value.
      precision: passed to ``jnp.einsum``.
      **weights_options: the other keyword arguments of ``dot_product_attention_weights``
        (``broadcast_dropout``, ``dropout_rng``, ``dropout_rate``, ``deterministic``,
        ``module``), passed on to it.

    Returns:
      ``[batch..., q_length, num_heads, v_head_dim]``.

    Example::

      >>> q = k = v = jnp.ones((2, 4, 3, 8))
      >>> dot_product_attention(q, k, v).shape
      (2, 4, 3, 8)
    """
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
    _check_qkv(query, key, value)
    weights = dot_product_attention_weights(
        query, key, bias, mask, dtype=query.dtype, precision=precision, **weights_options
    )
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


def make_attention_mask(
    query_input: Array,
    key_input: Array,
    pairwise_fn: Callable[[Array, Array], Array] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: Any = jnp.float32,
) -> Array:
    """A ``[batch..., 1, q_length, kv_length]`` mask ``pairwise_fn(query_i, key_j)``.

    Args:
      query_input: ``[batch..., q_length]`` (e.g. a padding indicator per query position).
      key_input: ``[batch..., kv_length]``.
      pairwise_fn: combines a query entry with a key entry (default: multiply).
      extra_batch_dims: leading singleton axes to add.
      dtype: dtype of the mask.

    Example::

      >>> tokens = jnp.array([[5, 7, 0]])  # 0 is padding
      >>> make_attention_mask(tokens > 0, tokens > 0).shape
      (1, 1, 3, 3)
    """
    mask = pairwise_fn(
        jnp.expand_dims(jnp.asarray(query_input), -1), jnp.expand_dims(jnp.asarray(key_input), -2)
    )
    mask = jnp.expand_dims(mask, -3)
    mask = jnp.reshape(mask, (1,) * extra_batch_dims + mask.shape)
    return mask.astype(dtype)


def make_causal_mask(x: Array, extra_batch_dims: int = 0, dtype: Any = jnp.float32) -> Array:
    """A ``[batch..., 1, length, length]`` mask letting position i attend to positions <= i.

    Args:
      x: ``[batch..., length]``; only its shape is used.
      extra_batch_dims: leading singleton axes to add.
      dtype: dtype of the mask.
    """
    shape = jnp.shape(x)
    positions = jnp.broadcast_to(jnp.arange(shape[-1]), shape)
    return make_attention_mask(
        positions, positions, jnp.greater_equal, extra_batch_dims=extra_batch_dims, dtype=dtype
    )


def combine_masks(*masks: Array | None, dtype: Any = jnp.float32) -> Array | None:
    """The logical AND of the given masks (None entries are skipped; all None gives None).

    Args:
      *masks: masks of the same rank, broadcastable to each other.
      dtype: dtype of the result.
    """
    present = [jnp.asarray(m) for m in masks if m is not None]
    if not present:
        return None
    ranks = {m.ndim for m in present}
    if len(ranks) != 1:
        raise ValueError(
            f"combine_masks: masks must have the same rank, got shapes "
            f"{[m.shape for m in present]}."
        )
    combined = functools.reduce(jnp.logical_and, present)
    return combined.astype(dtype)


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


class MultiHeadAttention(Module):
    """Multi-head attention with query/key/value/out projections and an optional decode cache.

    ``query``, ``key`` and ``value`` project ``[..., length, features]`` inputs to
    ``[..., length, num_heads, head_dim]``; ``out`` projects the attended values back to
    ``out_features``. ``model.eval()`` / ``model.train()`` switch ``deterministic`` (dropout).

    For autoregressive decoding, call ``init_cache(input_shape)`` once, then call the layer
    with ``decode=True`` on one token at a time; each call appends the token's key and value
    to the ``Cache`` Variables ``cached_key`` / ``cached_value`` and advances ``cache_index``.

    Args:
      num_heads: number of heads.
      in_features: feature size of ``inputs_q``.
      qkv_features: total size of the query/key/value projections (default ``in_features``);
        must be divisible by ``num_heads``.
      out_features: output feature size (default ``in_features``).
      in_kv_features: feature size of ``inputs_k``/``inputs_v`` (default ``in_features``).
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of the parameters.
      broadcast_dropout: share the attention-dropout mask over batch and heads.
      dropout_rate: attention-weight dropout probability.
      deterministic: disable dropout (None: must be given at call time when dropout is on).
      precision: passed to the projections and ``attention_fn``.
      kernel_init: initializer of the query/key/value kernels.
      out_kernel_init: initializer of the out kernel (default ``kernel_init``).
      bias_init: initializer of the query/key/value biases.
      out_bias_init: initializer of the out bias (default ``bias_init``).
      use_bias: whether the projections have biases.
      attention_fn: ``dot_product_attention`` or a function with its signature.
      decode: run in autoregressive decoding mode by default.
      normalize_qk: apply a LayerNorm (no bias) to queries and keys (QK-norm).
      rngs: random streams: ``params`` for the weights, ``dropout`` (kept) for attention dropout.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        in_kv_features: int | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = None,
        precision: Any = None,
        kernel_init: initializers.Initializer = default_kernel_init,
        out_kernel_init: initializers.Initializer | None = None,
        bias_init: initializers.Initializer = initializers.zeros,
        out_bias_init: initializers.Initializer | None = None,
        use_bias: bool = True,
        attention_fn: Callable[..., Array] = dot_product_attention,
        decode: bool | None = None,
        normalize_qk: bool = False,
        rngs: Rngs,
    ):
        qkv_features = in_features if qkv_features is None else qkv_features
        out_features = in_features if out_features is None else out_features
        in_kv_features = in_features if in_kv_features is None else in_kv_features
        if qkv_features % num_heads != 0:
            raise ValueError(
                f"MultiHeadAttention: qkv_features ({qkv_features}) must be divisible by "
                f"num_heads ({num_heads})."
            )
        head_dim = qkv_features // num_heads
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = qkv_features
        self.out_features = out_features
        self.in_kv_features = in_kv_features
        self.head_dim = head_dim
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = dropout_rate
        self.deterministic = deterministic
        self.precision = precision
        self.use_bias = use_bias
        self.attention_fn = attention_fn
        self.decode = decode
        self.normalize_qk = normalize_qk

        def projection(features: int) -> LinearGeneral:
            return LinearGeneral(
                features, (num_heads, head_dim), axis=-1, use_bias=use_bias, dtype=dtype,
                param_dtype=param_dtype, precision=precision, kernel_init=kernel_init,
                bias_init=bias_init, rngs=rngs,
            )

        self.query = projection(in_features)
        self.key = projection(in_kv_features)
        self.value = projection(in_kv_features)
        if normalize_qk:
            self.query_ln, self.key_ln = [
                LayerNorm(head_dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for _ in range(2)
            ]
        else:
            self.query_ln = None
            self.key_ln = None
        self.out = LinearGeneral(
            (num_heads, head_dim), out_features, axis=(-2, -1), use_bias=use_bias, dtype=dtype,
            param_dtype=param_dtype, precision=precision,
            kernel_init=out_kernel_init or kernel_init, bias_init=out_bias_init or bias_init,
            rngs=rngs,
        )
        if dropout_rate > 0.0 and ("dropout" in rngs or "default" in rngs):
            self.rngs = rngs["dropout"].fork()
        else:
            self.rngs = None
        self.cached_key: Cache | None = None
        self.cached_value: Cache | None = None
        self.cache_index: Cache | None = None

    def _check_features(self, name: str, x: Array, expected: int) -> None:
        check_last_axis("MultiHeadAttention", x, expected, f"the last axis of {name}")

    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array | None = None,
        inputs_v: Array | None = None,
        *,
        mask: Array | None = None,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
    ) -> Array:
        """Attend from ``inputs_q`` to ``inputs_k``/``inputs_v`` (self-attention by default).

        Args:
          inputs_q: ``[batch..., q_length, in_features]``.
          inputs_k: ``[batch..., kv_length, in_kv_features]`` (default ``inputs_q``).
          inputs_v: ``[batch..., kv_length, in_kv_features]`` (default ``inputs_k``).
          mask: ``[batch..., num_heads or 1, q_length, kv_length]``; False entries are ignored.
          deterministic: overrides the attribute (True disables dropout).
          rngs: streams (or a stream) to draw the dropout key from instead of the kept ones.
          sow_weights: record the attention weights as ``Intermediate`` ``attention_weights``.
          decode: overrides the attribute; True appends one step to the cache.

        Returns:
          ``[batch..., q_length, out_features]``.
        """
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    "MultiHeadAttention: inputs_k is None but inputs_v is given; pass inputs_k "
                    "too (for self-attention pass neither)."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        self._check_features("inputs_q", inputs_q, self.in_features)
        self._check_features("inputs_k", inputs_k, self.in_kv_features)
        self._check_features("inputs_v", inputs_v, self.in_kv_features)

        query = self.query(inputs_q)
        key = self.key(inputs_k)
        value = self.value(inputs_v)
        if self.normalize_qk:
            query = self.query_ln(query)
            key = self.key_ln(key)

        if _first(decode, self.decode, False):
            key, value, mask = self._extend_cache(query, key, value, mask)

        deterministic = _first(deterministic, self.deterministic)
        dropout_rng = None
        if self.dropout_rate > 0.0:
            if deterministic is None:
                raise ValueError(
                    "MultiHeadAttention: dropout_rate > 0 needs deterministic set, either in "
                    "the constructor, through model.train()/model.eval(), or at call time."
                )
            if not deterministic:
                dropout_rng = self._dropout_key(rngs)
        else:
            deterministic = True

        x = self.attention_fn(
            query, key, value, mask=mask, dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate, broadcast_dropout=self.broadcast_dropout,
            deterministic=deterministic, dtype=self.dtype, precision=self.precision,
            module=self if sow_weights else None,
        )
        return self.out(x)

    def _dropout_key(self, rngs: Rngs | RngStream | None) -> Array:
        source = rngs if rngs is not None else self.rngs
        if isinstance(source, Rngs):
            return source["dropout"]()
        if isinstance(source, RngStream):
            return source()
        raise ValueError(
            "MultiHeadAttention: dropout is on (deterministic=False, dropout_rate="
            f"{self.dropout_rate}) but there is no RNG: construct the layer with "
            "rngs=nnx.Rngs(dropout=...) or pass rngs= to the call."
        )

    def _extend_cache(
        self, query: Array, key: Array, value: Array, mask: Array | None
    ) -> tuple[Array, Array, Array | None]:
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError(
                "MultiHeadAttention: decode=True needs the autoregressive cache; call "
                "init_cache(input_shape) first, with input_shape = (batch..., max_length, "
                "in_features)."
            )
        *batch_dims, max_length, num_heads, head_dim = self.cached_key.value.shape
        expected = (*batch_dims, 1, num_heads, head_dim)
        if tuple(query.shape) != expected:
            raise ValueError(
                f"MultiHeadAttention: in decode mode the projected query must have shape "
                f"{expected} (one step of the cached batch), got {tuple(query.shape)}."
            )
        index = self.cache_index.value
        start = (0,) * len(batch_dims) + (index, 0, 0)
        cached_key = self.cached_key.value
        cached_value = self.cached_value.value
        key = jax.lax.dynamic_update_slice(cached_key, key.astype(cached_key.dtype), start)
        value = jax.lax.dynamic_update_slice(cached_value, value.astype(cached_value.dtype), start)
        self.cached_key.value = key
        self.cached_value.value = value
        self.cache_index.value = index + 1
        visible = jnp.arange(max_length) <= index
        step_mask = jnp.broadcast_to(visible, (*batch_dims, 1, 1, max_length))
        return key, value, combine_masks(mask, step_mask)

    def init_cache(self, input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> None:
        """Create the decoding cache for inputs of shape ``(batch..., max_length, features)``.

        Args:
          input_shape: the shape of the full-length input sequence.
          dtype: dtype of the cached keys and values.
        """
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                "MultiHeadAttention.init_cache expects input_shape (batch..., max_length, "
                f"features), got {input_shape}."
            )
        cache_shape = (*input_shape[:-1], self.num_heads, self.head_dim)
        self.cached_key = Cache(jnp.zeros(cache_shape, dtype))
        self.cached_value = Cache(jnp.zeros(cache_shape, dtype))
        self.cache_index = Cache(jnp.array(0, dtype=jnp.int32))


__all__ = [
    "MultiHeadAttention", "combine_masks", "dot_product_attention",
    "dot_product_attention_weights", "make_attention_mask", "make_causal_mask",
]
