"""Attention: scaled dot-product attention and ``MultiHeadAttention`` (the mask helpers of
``masks`` are re-exported here).

Arrays follow the layout ``[batch..., length, num_heads, head_dim]``; masks and attention
weights are ``[batch..., num_heads, q_length, kv_length]`` (broadcastable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from nnx.module import Module
from nnx.nn import dtypes, initializers
from nnx.nn._params import NO_METADATA
from nnx.nn.dtypes import check_last_axis
from nnx.nn.linear import LinearGeneral, default_kernel_init
from nnx.nn.masks import combine_masks, make_attention_mask, make_causal_mask
from nnx.nn.normalization import LayerNorm
from nnx.rnglib import Rngs, RngStream
from nnx.variablelib import Cache, Intermediate

Array = jax.Array


def _check_qkv(query: Array, key: Array, value: Array | None = None) -> None:
    """Validate the ``[batch..., length, heads, depth]`` shapes of query, key (and value); the
    query may have more heads than key and value (grouped-query attention) if a multiple."""
    arrays = (query, key) if value is None else (query, key, value)
    shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
    if len({a.ndim for a in arrays}) != 1:
        raise ValueError(
            f"dot_product_attention: query, key and value must have the same rank, got shapes "
            f"{shapes}."
        )
    if query.ndim < 3:
        raise ValueError(
            f"dot_product_attention expects [batch..., length, num_heads, head_dim] arrays, got "
            f"query of shape {query.shape}."
        )
    if len({a.shape[:-3] for a in arrays}) != 1:
        raise ValueError(
            f"dot_product_attention: batch dims must match, got shapes {shapes}."
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"dot_product_attention: query and key depths must match (the head_dim axis), got "
            f"{query.shape[-1]} and {key.shape[-1]}."
        )
    if value is not None:
        if key.shape[-3] != value.shape[-3]:
            raise ValueError(
                f"dot_product_attention: key and value lengths must match, got {key.shape[-3]} "
                f"and {value.shape[-3]}."
            )
        if key.shape[-2] != value.shape[-2]:
            raise ValueError(
                f"dot_product_attention: key and value must have the same number of heads, got "
                f"{key.shape[-2]} and {value.shape[-2]}."
            )
    if query.shape[-2] % key.shape[-2]:
        raise ValueError(
            f"dot_product_attention: query heads ({query.shape[-2]}) must be a multiple of key "
            f"heads ({key.shape[-2]}) for grouped-query attention."
        )


def dot_product_attention_weights(
    query: Array,
    key: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
    is_causal: bool = False,
) -> Array:
    """Attention weights ``softmax(query @ key^T / sqrt(head_dim) + bias)`` with masking/dropout.

    With fewer key heads than query heads (grouped-query attention), each key head serves
    ``q_heads // k_heads`` consecutive query heads.

    Args:
      query: ``[batch..., q_length, num_heads, head_dim]``.
      key: ``[batch..., kv_length, num_kv_heads, head_dim]``.
      bias: added to the logits; broadcastable to ``[batch..., num_heads, q_length, kv_length]``.
      mask: boolean (or 0/1) array of that shape; False entries get no weight.
      broadcast_dropout: share the dropout mask over batch and head dims.
      dropout_rng: key for dropout (needed when ``dropout_rate > 0`` and not deterministic).
      dropout_rate: probability of dropping a weight.
      deterministic: disable dropout.
      dtype: computation dtype; None promotes query and key.
      precision: passed to ``jnp.einsum``.
      module: when given, the weights are sown into it as ``Intermediate`` ``attention_weights``.
      promote_dtype: casts ``(query, key)`` to the computation dtype.
      is_causal: also mask out the keys after each query (a lower-triangular mask, aligned at
        the start of both sequences).

    Returns:
      Weights of shape ``[batch..., num_heads, q_length, kv_length]``.
    """
    query, key = promote_dtype((query, key), dtype=dtype)
    _check_qkv(query, key)
    dtype = query.dtype
    depth = query.shape[-1]
    query = query / jnp.sqrt(jnp.asarray(depth, dtype))
    q_heads, k_heads = query.shape[-2], key.shape[-2]
    if q_heads == k_heads:
        weights = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision)
    else:  # grouped-query attention: group g of query heads uses key head g
        grouped = jnp.reshape(query, (*query.shape[:-2], k_heads, q_heads // k_heads, depth))
        weights = jnp.einsum("...qhgd,...khd->...hgqk", grouped, key, precision=precision)
        weights = jnp.reshape(weights, (*weights.shape[:-4], q_heads, *weights.shape[-2:]))
    if bias is not None:
        weights = weights + bias
    if is_causal:
        q_length, kv_length = weights.shape[-2:]
        causal = jnp.tril(jnp.ones((q_length, kv_length), bool))
        mask = causal if mask is None else jnp.logical_and(jnp.asarray(mask, bool), causal)
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
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
    is_causal: bool = False,
) -> Array:
    """Scaled dot-product attention: ``softmax(q k^T / sqrt(d) + bias, masked) v``.

    Key and value may have fewer heads than the query (grouped-query attention, see
    ``dot_product_attention_weights``).

    Args:
      query: ``[batch..., q_length, num_heads, head_dim]``.
      key: ``[batch..., kv_length, num_kv_heads, head_dim]``.
      value: ``[batch..., kv_length, num_kv_heads, v_head_dim]``.
      bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic, module,
        is_causal: as in ``dot_product_attention_weights``.
      dtype: computation dtype; None promotes query, key and value.
      precision: passed to ``jnp.einsum``.
      promote_dtype: casts ``(query, key, value)`` to the computation dtype.

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
        query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic,
        query.dtype, precision, module, promote_dtype, is_causal,
    )
    q_heads, v_heads = query.shape[-2], value.shape[-2]
    if q_heads == v_heads:
        return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)
    grouped = jnp.reshape(weights, (*weights.shape[:-3], v_heads, q_heads // v_heads,
                                    *weights.shape[-2:]))
    out = jnp.einsum("...hgqk,...khd->...qhgd", grouped, value, precision=precision)
    return jnp.reshape(out, (*out.shape[:-3], q_heads, out.shape[-1]))


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


class MultiHeadAttention(Module):
    """Multi-head attention with query/key/value/out projections and an optional decode cache.

    ``query`` projects ``[..., length, in_features]`` inputs to ``[..., length, num_heads,
    head_dim]``, ``key`` and ``value`` to ``num_kv_heads`` heads (fewer heads than the query is
    grouped-query attention); ``out`` projects the attended values back to ``out_features``.
    ``model.eval()`` / ``model.train()`` switch ``deterministic`` (dropout).

    For autoregressive decoding, call ``init_cache(input_shape)`` once, then call the layer
    with ``decode=True`` on one token at a time; each call appends the token's key and value
    to the ``Cache`` Variables ``cached_key`` / ``cached_value`` and advances ``cache_index``.

    Args:
      num_heads: number of query heads.
      in_features: feature size of ``inputs_q``.
      qkv_features: total size of the query projection (default ``in_features``); must be
        divisible by ``num_heads``.
      out_features: output feature size (default ``in_features``).
      num_kv_heads: number of key/value heads (default ``num_heads``); must divide
        ``num_heads``.
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
      qkv_promote_dtype: ``promote_dtype`` of the query/key/value projections.
      out_promote_dtype: ``promote_dtype`` of the out projection.
      ln_promote_dtype: ``promote_dtype`` of the QK-norm LayerNorms.
      qkv_dot_general, out_dot_general: ``dot_general`` of the projections (default
        ``jax.lax.dot_general``).
      qkv_dot_general_cls, out_dot_general_cls: ``dot_general_cls`` of the projections.
      rngs: random streams: ``params`` for the weights, ``dropout`` for attention dropout.
      keep_rngs: keep a ``dropout`` stream forked from ``rngs`` (when ``dropout_rate > 0``);
        without it, the call needs ``rngs=`` for dropout.
      kernel_metadata: metadata of the query/key/value kernels.
      out_kernel_metadata: metadata of the out kernel (default ``kernel_metadata``).
      bias_metadata: metadata of the query/key/value biases.
      out_bias_metadata: metadata of the out bias (default ``bias_metadata``).
      query_ln_scale_metadata: metadata of ``query_ln.scale``.
      key_ln_scale_metadata: metadata of ``key_ln.scale``.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
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
        qkv_promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        out_promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        ln_promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        qkv_dot_general: Callable[..., Array] | None = None,
        out_dot_general: Callable[..., Array] | None = None,
        qkv_dot_general_cls: Any = None,
        out_dot_general_cls: Any = None,
        rngs: Rngs,
        keep_rngs: bool = True,
        kernel_metadata: Mapping[str, Any] = NO_METADATA,
        out_kernel_metadata: Mapping[str, Any] = NO_METADATA,
        bias_metadata: Mapping[str, Any] = NO_METADATA,
        out_bias_metadata: Mapping[str, Any] = NO_METADATA,
        query_ln_scale_metadata: Mapping[str, Any] = NO_METADATA,
        key_ln_scale_metadata: Mapping[str, Any] = NO_METADATA,
    ):
        qkv_features = in_features if qkv_features is None else qkv_features
        out_features = in_features if out_features is None else out_features
        in_kv_features = in_features if in_kv_features is None else in_kv_features
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if qkv_features % num_heads != 0:
            raise ValueError(
                f"MultiHeadAttention: qkv_features ({qkv_features}) must be divisible by "
                f"num_heads ({num_heads})."
            )
        if num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
            raise ValueError(
                f"MultiHeadAttention: num_heads ({num_heads}) must be a multiple of "
                f"num_kv_heads ({num_kv_heads})."
            )
        head_dim = qkv_features // num_heads
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
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
        self.qkv_promote_dtype = qkv_promote_dtype
        self.out_promote_dtype = out_promote_dtype
        self.ln_promote_dtype = ln_promote_dtype

        def projection(features: int, heads: int) -> LinearGeneral:
            return LinearGeneral(
                features, (heads, head_dim), axis=-1, use_bias=use_bias, dtype=dtype,
                param_dtype=param_dtype, precision=precision, kernel_init=kernel_init,
                bias_init=bias_init, promote_dtype=qkv_promote_dtype,
                dot_general=qkv_dot_general, dot_general_cls=qkv_dot_general_cls, rngs=rngs,
                kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
            )

        self.query = projection(in_features, num_heads)
        self.key = projection(in_kv_features, num_kv_heads)
        self.value = projection(in_kv_features, num_kv_heads)
        if normalize_qk:
            self.query_ln, self.key_ln = [
                LayerNorm(
                    head_dim, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                    promote_dtype=ln_promote_dtype, rngs=rngs, scale_metadata=metadata,
                )
                for metadata in (query_ln_scale_metadata, key_ln_scale_metadata)
            ]
        else:
            self.query_ln = None
            self.key_ln = None
        self.out = LinearGeneral(
            (num_heads, head_dim), out_features, axis=(-2, -1), use_bias=use_bias, dtype=dtype,
            param_dtype=param_dtype, precision=precision,
            kernel_init=out_kernel_init or kernel_init, bias_init=out_bias_init or bias_init,
            promote_dtype=out_promote_dtype, dot_general=out_dot_general,
            dot_general_cls=out_dot_general_cls, rngs=rngs,
            kernel_metadata=out_kernel_metadata or kernel_metadata,
            bias_metadata=out_bias_metadata or bias_metadata,
        )
        self.rngs = rngs["dropout"].fork() if keep_rngs and dropout_rate > 0.0 else None
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
        is_causal: bool = False,
        out_sharding: Any = None,
        qkv_sharding: Any = None,
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
          is_causal: let each query attend only to the keys up to its own position (passed to
            ``attention_fn``).
          out_sharding: sharding of the output (the out projection's).
          qkv_sharding: sharding of the query/key/value projections' outputs.

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

        query = self.query(inputs_q, out_sharding=qkv_sharding)
        key = self.key(inputs_k, out_sharding=qkv_sharding)
        value = self.value(inputs_v, out_sharding=qkv_sharding)
        if self.normalize_qk:
            query = self.query_ln(query)
            key = self.key_ln(key)

        if _first(decode, self.decode, False):
            key, value, mask = self._extend_cache(key, value, mask)

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

        options = {"is_causal": True} if is_causal else {}
        x = self.attention_fn(
            query, key, value, mask=mask, dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate, broadcast_dropout=self.broadcast_dropout,
            deterministic=deterministic, dtype=self.dtype, precision=self.precision,
            module=self if sow_weights else None, **options,
        )
        return self.out(x, out_sharding=out_sharding)

    def _dropout_key(self, rngs: Rngs | RngStream | None) -> Array:
        source = rngs if rngs is not None else self.rngs
        if isinstance(source, Rngs):
            return source["dropout"]()
        if isinstance(source, RngStream):
            return source()
        raise ValueError(
            "MultiHeadAttention: dropout is on (deterministic=False, dropout_rate="
            f"{self.dropout_rate}) but there is no RNG: construct the layer with "
            "rngs=nnx.Rngs(dropout=...) (and keep_rngs=True) or pass rngs= to the call."
        )

    def _extend_cache(
        self, key: Array, value: Array, mask: Array | None
    ) -> tuple[Array, Array, Array | None]:
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError(
                "MultiHeadAttention: decode=True needs the autoregressive cache; call "
                "init_cache(input_shape) first, with input_shape = (batch..., max_length, "
                "in_features)."
            )
        *batch_dims, max_length, num_heads, head_dim = self.cached_key.value.shape
        expected = (*batch_dims, 1, num_heads, head_dim)
        if tuple(key.shape) != expected:
            raise ValueError(
                f"MultiHeadAttention: in decode mode the projected key must have shape "
                f"{expected} (one step of the cached batch), got {tuple(key.shape)}."
            )
        index = self.cache_index.value
        zero = jnp.zeros((), index.dtype)  # all indices of one dtype, also with x64 enabled
        start = (zero,) * len(batch_dims) + (index, zero, zero)
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
        cache_shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
        self.cached_key = Cache(jnp.zeros(cache_shape, dtype))
        self.cached_value = Cache(jnp.zeros(cache_shape, dtype))
        self.cache_index = Cache(jnp.array(0, dtype=jnp.int32))

    def set_view(
        self,
        deterministic: bool | None = None,
        decode: bool | None = None,
        batch_size: int | tuple[int, ...] | None = None,
        max_length: int | None = None,
    ) -> None:
        """The hook ``nnx.view`` calls: set ``deterministic`` and ``decode`` when given; with
        ``decode=True``, ``batch_size`` and ``max_length`` also create the cache if there is
        none yet (in ``dtype``, float32 by default)."""
        if deterministic is not None:
            self.deterministic = deterministic
        if decode is not None:
            self.decode = decode
            if decode and self.cached_key is None and batch_size is not None:
                if max_length is None:
                    raise TypeError(
                        "MultiHeadAttention.set_view: creating the decode cache needs "
                        "max_length as well as batch_size"
                    )
                batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
                self.init_cache((*batch, max_length, self.in_features), self.dtype or jnp.float32)


__all__ = [
    "MultiHeadAttention", "combine_masks", "dot_product_attention",
    "dot_product_attention_weights", "make_attention_mask", "make_causal_mask",
]
