"""The computation behind the normalization layers: moments over some axes (optionally masked
and averaged over a mapped axis), ``(x - mean) / sqrt(var + eps) * scale + bias``, and the
running averages of ``BatchNorm``.

Unlike the contractions of ``linear`` and ``conv``, this is not wrapped in a ``jax.jit`` of its
own: compiled as one function, XLA fuses the reductions with their neighbours and rewrites
``sum / n`` as ``sum * (1 / n)``, which changes the last bit of the results; run op by op
outside a trace it gives the same bits as Flax (NNX and Linen). Under a user's ``jit`` it is
fused like any other code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from nnx.nn.dtypes import PromoteDtypeFn, canonicalize_dtype


def _abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2`` elementwise (real for complex ``x``)."""
    if jnp.iscomplexobj(x):
        return jnp.square(jnp.real(x)) + jnp.square(jnp.imag(x))
    return jnp.square(x)


def compute_stats(
    x: jax.Array,
    axes: tuple[int, ...],
    *,
    dtype: Any,
    axis_name: str | None,
    axis_index_groups: Any,
    use_mean: bool = True,
    use_fast_variance: bool = True,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``x`` over ``axes`` (reduced away), in at least float32.

    With ``axis_name`` the moments are averaged over that mapped axis (``vmap``/``pmap``/
    ``shard_map``) with ``jax.lax.pmean``. With ``use_mean=False`` the mean is zero and the
    "variance" is the mean square (RMSNorm). Negative variances from round-off are clipped to 0.
    """
    dtype = jnp.promote_types(canonicalize_dtype(x, dtype=dtype), jnp.float32)
    x = jnp.asarray(x, dtype)

    def mean(v: jax.Array) -> jax.Array:
        m = jnp.mean(v, axis=axes, where=mask)
        if axis_name is not None:
            m = jax.lax.pmean(m, axis_name, axis_index_groups=axis_index_groups)
        return m

    if not use_mean:
        return jnp.zeros((), dtype), mean(_abs_sq(x))
    mu = mean(x)
    if use_fast_variance:
        var = jnp.maximum(0.0, mean(_abs_sq(x)) - _abs_sq(mu))
    else:
        var = mean(_abs_sq(x - jnp.expand_dims(mu, axes)))
    return mu, var


def normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    reduction_axes: tuple[int, ...],
    feature_axes: tuple[int, ...],
    dtype: Any,
    epsilon: float,
) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias``, cast to ``dtype`` (or the promoted one).

    ``mean`` and ``var`` have ``x``'s shape without ``reduction_axes`` (or are scalars);
    ``scale`` and ``bias`` hold the ``feature_axes`` entries.
    """
    stats_shape = [1 if a in reduction_axes else n for a, n in enumerate(x.shape)]
    feature_shape = [n if a in feature_axes else 1 for a, n in enumerate(x.shape)]
    mean = jnp.reshape(mean, stats_shape) if mean.ndim else mean
    y = x - mean
    mul = jax.lax.rsqrt(jnp.reshape(var, stats_shape) + epsilon)
    if scale is not None:
        mul = mul * jnp.reshape(scale, feature_shape)
    y = y * mul
    if bias is not None:
        y = y + jnp.reshape(bias, feature_shape)
    return jnp.asarray(y, canonicalize_dtype(x, scale, bias, dtype=dtype))


def _promote(
    promote_dtype: PromoteDtypeFn,
    x: jax.Array,
    stats: tuple[jax.Array, jax.Array] | None,
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    with_bias: bool,
    dtype: Any,
) -> tuple:
    """Call the layer's ``promote_dtype`` on the tuple Flax gives it: ``(x, [mean, var,] scale
    [, bias])`` (running statistics for BatchNorm, no bias for RMSNorm)."""
    args = (x, *(stats or ()), scale, *((bias,) if with_bias else ()))
    out = tuple(promote_dtype(args, dtype=dtype))
    x, rest = out[0], out[1:]
    if stats is not None:
        stats, rest = (rest[0], rest[1]), rest[2:]
    return x, stats, rest[0], rest[1] if with_bias else None


def norm_forward(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    mask: jax.Array | None,
    stats: tuple[jax.Array, jax.Array] | None,
    *,
    reduction_axes: tuple[int, ...],
    feature_axes: tuple[int, ...],
    dtype: Any,
    epsilon: float,
    axis_name: str | None,
    axis_index_groups: tuple | None,
    use_mean: bool,
    use_fast_variance: bool,
    use_stats: bool,
    groups: int | None,
    promote_dtype: PromoteDtypeFn,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Promote, normalize ``x`` and return ``(y, mean, var)``.

    Args:
      x, scale, bias: the input and the layer's optional parameters.
      mask: booleans broadcastable to ``x``; only True entries count in the statistics.
      stats: BatchNorm's running ``(mean, var)`` (None for the other layers); used instead of
        the input's own statistics when ``use_stats``.
      reduction_axes, feature_axes: sorted non-negative axes of ``x``.
      groups: GroupNorm's number of groups: the statistics are then taken within each group of
        consecutive channels of the last axis (which ``reduction_axes`` includes).
      promote_dtype, dtype, epsilon, axis_name, axis_index_groups, use_mean,
        use_fast_variance: the layer's options.
    """
    x, stats, scale, bias = _promote(
        promote_dtype, x, stats, scale, bias, with_bias=use_mean, dtype=dtype
    )
    stat_options = dict(
        dtype=dtype, axis_name=axis_name, axis_index_groups=axis_index_groups,
        use_mean=use_mean, use_fast_variance=use_fast_variance,
    )
    if use_stats:
        mean, var = stats
    elif groups is None:
        mean, var = compute_stats(x, reduction_axes, mask=mask, **stat_options)
    else:
        mean, var = _group_stats(x, mask, reduction_axes, groups, stat_options)
    stats_axes = tuple(a for a in reduction_axes if groups is None or a != x.ndim - 1)
    y = normalize(x, mean, var, scale, bias, stats_axes, feature_axes, dtype, epsilon)
    return y, mean, var


def _group_stats(
    x: jax.Array, mask: jax.Array | None, reduction_axes: tuple[int, ...], groups: int,
    options: dict[str, Any],
) -> tuple[jax.Array, jax.Array]:
    """Statistics over ``reduction_axes`` within each of ``groups`` groups of channels,
    repeated back to one entry per channel (shape: ``x``'s without the other reduced axes)."""
    grouped = (*x.shape[:-1], groups, x.shape[-1] // groups)
    if mask is not None:
        mask = jnp.reshape(jnp.broadcast_to(mask, x.shape), grouped)
    axes = tuple(a for a in reduction_axes if a != x.ndim - 1) + (x.ndim,)
    mean, var = compute_stats(jnp.reshape(x, grouped), axes, mask=mask, **options)
    size = grouped[-1]
    return jnp.repeat(mean, size, axis=-1), jnp.repeat(var, size, axis=-1)


def moving_average(
    running: tuple[jax.Array, ...], batch: tuple[jax.Array, ...], weights: tuple[float, float]
) -> tuple[jax.Array, ...]:
    """``weights[0] * running + weights[1] * batch`` for each pair (batch stats reshaped);
    the caller passes ``(momentum, 1 - momentum)``."""
    keep, take = weights
    return tuple(
        keep * r + take * jnp.reshape(b, r.shape) for r, b in zip(running, batch, strict=True)
    )
