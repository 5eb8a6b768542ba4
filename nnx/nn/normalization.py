"""Normalization layers: ``BatchNorm``, ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``InstanceNorm``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnx.module import Module
from nnx.nn import initializers
from nnx.nn.dtypes import canonicalize_dtype, feature_error
from nnx.rnglib import Rngs
from nnx.variablelib import BatchStat, Param

Axes = int | Sequence[int]


def _canonical_axes(axes: Axes, ndim: int, layer: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{layer}: axis {a} is out of range for inputs with {ndim} dims")
    return tuple(sorted({a % ndim for a in axes}))


def _check_features(layer: str, x: jax.Array, feature_axes: tuple[int, ...], expected: int) -> None:
    got = 1
    for a in feature_axes:
        got *= x.shape[a]
    if got != expected:
        where = f"axis {feature_axes[0]}" if len(feature_axes) == 1 else f"axes {feature_axes}"
        raise feature_error(layer, expected, got, x.shape, where)


def _compute_stats(
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
    "variance" is the mean square (RMSNorm).
    """
    dtype = jnp.promote_types(canonicalize_dtype(x, dtype=dtype), jnp.float32)
    x = jnp.asarray(x, dtype)

    def mean(v: jax.Array) -> jax.Array:
        m = jnp.mean(v, axis=axes, where=mask)
        if axis_name is not None:
            m = jax.lax.pmean(m, axis_name, axis_index_groups=axis_index_groups)
        return m

    if not use_mean:
        return jnp.zeros((), dtype), mean(jnp.square(x))
    if use_fast_variance:
        mu = mean(x)
        var = jnp.maximum(0.0, mean(jnp.square(x)) - jnp.square(mu))
    else:
        mu = mean(x)
        shape = list(x.shape)
        for a in axes:
            shape[a] = 1
        var = mean(jnp.square(x - jnp.reshape(mu, shape)))
    return mu, var


def _normalize(
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
    """``(x - mean) / sqrt(var + eps) * scale + bias``, cast to ``dtype`` (or the promoted one)."""
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


_STATIC = (
    "reduction_axes", "feature_axes", "dtype", "epsilon", "axis_name", "axis_index_groups",
    "use_mean", "use_fast_variance",
)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _forward(
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
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalize ``x`` with ``stats`` (or with its own statistics when None) in one compiled
    function, so an eager call compiles once instead of once per primitive.

    Returns the output and the mean and variance used.
    """
    if stats is None:
        mean, var = _compute_stats(
            x, reduction_axes, dtype=dtype, axis_name=axis_name,
            axis_index_groups=axis_index_groups, use_mean=use_mean,
            use_fast_variance=use_fast_variance, mask=mask,
        )
    else:
        mean, var = stats
    y = _normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, dtype, epsilon)
    return y, mean, var


@jax.jit
def _moving_average(running: tuple, batch: tuple, momentum: float) -> tuple:
    """``momentum * running + (1 - momentum) * batch`` for each pair (batch stats flattened)."""
    return tuple(
        momentum * r + (1 - momentum) * jnp.reshape(b, r.shape)
        for r, b in zip(running, batch, strict=True)
    )


def _groups(axis_index_groups: Any) -> tuple | None:
    """``axis_index_groups`` as nested tuples (a hashable, static argument)."""
    if axis_index_groups is None:
        return None
    return tuple(tuple(group) for group in axis_index_groups)


class _Norm(Module):
    """What the normalization layers share: the optional ``scale`` and ``bias`` Params, the
    options of the statistics, and the compiled forward pass."""

    def _init_norm(
        self,
        num_features: int,
        *,
        epsilon: float,
        dtype: Any,
        param_dtype: Any,
        use_bias: bool,
        use_scale: bool,
        bias_init: initializers.Initializer,
        scale_init: initializers.Initializer,
        axis_name: str | None,
        axis_index_groups: Any,
        use_fast_variance: bool,
        rngs: Rngs | None,
    ) -> None:
        """Create ``scale`` then ``bias`` (each None when off) and set the common attributes."""
        if (use_bias or use_scale) and rngs is None:
            raise ValueError(f"{type(self).__name__} needs rngs= to create its scale and bias")
        shape = (num_features,)
        self.scale = Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else None
        self.bias = Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else None
        self.num_features = num_features
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.param_dtype = param_dtype
        self.epsilon = epsilon
        self.dtype = dtype
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance

    def _feature_axes(self, x: jax.Array, axes: Axes) -> tuple[int, ...]:
        """``axes`` as sorted non-negative axes of ``x``, checked to hold ``num_features``."""
        layer = type(self).__name__
        feature_axes = _canonical_axes(axes, x.ndim, layer)
        _check_features(layer, x, feature_axes, self.num_features)
        return feature_axes

    def _affine(self) -> tuple[jax.Array | None, jax.Array | None]:
        scale = None if self.scale is None else self.scale.value
        bias = None if self.bias is None else self.bias.value
        return scale, bias

    def _apply(
        self,
        x: jax.Array,
        reduction_axes: tuple[int, ...],
        feature_axes: tuple[int, ...],
        *,
        mask: jax.Array | None,
        stats: tuple[jax.Array, jax.Array] | None = None,
        use_mean: bool = True,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        scale, bias = self._affine()
        return _forward(
            x, scale, bias, mask, stats, reduction_axes=reduction_axes,
            feature_axes=feature_axes, dtype=self.dtype, epsilon=self.epsilon,
            axis_name=self.axis_name, axis_index_groups=_groups(self.axis_index_groups),
            use_mean=use_mean, use_fast_variance=self.use_fast_variance,
        )

    def _apply_over_axes(
        self, x: jax.Array, *, mask: jax.Array | None, use_mean: bool = True
    ) -> jax.Array:
        """Normalize ``x`` over the ``reduction_axes`` attribute, with ``scale`` and ``bias`` on
        the ``feature_axes`` attribute (LayerNorm and RMSNorm)."""
        reduction_axes = _canonical_axes(self.reduction_axes, x.ndim, type(self).__name__)
        feature_axes = self._feature_axes(x, self.feature_axes)
        return self._apply(x, reduction_axes, feature_axes, mask=mask, use_mean=use_mean)[0]


class BatchNorm(_Norm):
    """Batch normalization with running averages of the batch statistics.

    In training mode (``use_running_average=False``) the batch mean and variance over every axis
    but ``axis`` normalize the input, and the running ``mean``/``var`` (``BatchStat``) move
    towards them: ``new = momentum * old + (1 - momentum) * batch``. In evaluation mode the
    running statistics are used and left unchanged. ``model.eval()`` / ``model.train()`` set
    ``use_running_average``.

    Args:
      num_features: size of the feature axis.
      use_running_average: use the stored statistics (evaluation mode).
      axis: the feature axis (or axes).
      momentum: decay of the running averages.
      epsilon: added to the variance.
      dtype: output dtype; None promotes inputs and parameters together.
      param_dtype: dtype of ``scale`` and ``bias``.
      use_bias: learn a ``bias``.
      use_scale: learn a ``scale``.
      bias_init: bias initializer.
      scale_init: scale initializer.
      axis_name: a mapped axis (``vmap``/``pmap``) over which to average the batch statistics.
      axis_index_groups: device groups for the cross-replica mean.
      use_fast_variance: ``E[x^2] - E[x]^2`` (one pass) instead of ``E[(x - E[x])^2]``.
      rngs: random streams for the parameter initializers.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool = False,
        axis: Axes = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: initializers.Initializer = initializers.zeros,
        scale_init: initializers.Initializer = initializers.ones,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        rngs: Rngs | None = None,
    ):
        self.mean = BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = BatchStat(jnp.ones((num_features,), jnp.float32))
        self._init_norm(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            axis_name=axis_name, axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance, rngs=rngs,
        )
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum

    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Normalize ``x``; ``use_running_average`` overrides the attribute for this call.

        Args:
          x: inputs with ``num_features`` entries along ``axis``.
          use_running_average: evaluation mode for this call (None: the attribute).
          mask: booleans broadcastable to ``x``; only True entries count in the statistics.
        """
        if use_running_average is None:
            use_running_average = self.use_running_average
        feature_axes = self._feature_axes(x, self.axis)
        reduction_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
        if use_running_average:
            y, _, _ = self._apply(
                x, reduction_axes, feature_axes, mask=mask,
                stats=(self.mean.value, self.var.value),
            )
            return y
        y, mean, var = self._apply(x, reduction_axes, feature_axes, mask=mask)
        self.mean.value, self.var.value = _moving_average(
            (self.mean.value, self.var.value), (mean, var), self.momentum
        )
        return y


class LayerNorm(_Norm):
    """Layer normalization: each example is normalized over ``reduction_axes``.

    Args:
      num_features: size of the feature axis (the ``scale`` and ``bias`` length).
      epsilon: added to the variance.
      dtype: output dtype; None promotes inputs and parameters together.
      param_dtype: dtype of ``scale`` and ``bias``.
      use_bias: learn a ``bias``.
      use_scale: learn a ``scale``.
      bias_init: bias initializer.
      scale_init: scale initializer.
      reduction_axes: axes to compute the statistics over.
      feature_axes: axes that ``scale`` and ``bias`` apply to.
      axis_name: a mapped axis over which to average the statistics.
      axis_index_groups: device groups for the cross-replica mean.
      use_fast_variance: one-pass variance.
      rngs: random streams for the parameter initializers.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: initializers.Initializer = initializers.zeros,
        scale_init: initializers.Initializer = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        rngs: Rngs | None = None,
    ):
        self._init_norm(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            axis_name=axis_name, axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance, rngs=rngs,
        )
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x`` over ``reduction_axes`` (``mask`` selects the entries that count)."""
        return self._apply_over_axes(x, mask=mask)


class RMSNorm(_Norm):
    """Root-mean-square normalization: ``x / sqrt(mean(x^2) + eps) * scale`` (no centring).

    Args:
      num_features: size of the feature axis.
      epsilon: added to the mean square.
      dtype: output dtype; None promotes inputs and parameters together.
      param_dtype: dtype of ``scale``.
      use_scale: learn a ``scale``.
      scale_init: scale initializer.
      reduction_axes: axes to compute the mean square over.
      feature_axes: axes that ``scale`` applies to.
      axis_name: a mapped axis over which to average the statistics.
      axis_index_groups: device groups for the cross-replica mean.
      use_fast_variance: accepted for signature compatibility (no variance is computed).
      rngs: random streams for the parameter initializer.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: initializers.Initializer = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        rngs: Rngs | None = None,
    ):
        self._init_norm(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=False, use_scale=use_scale, bias_init=initializers.zeros,
            scale_init=scale_init, axis_name=axis_name, axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance, rngs=rngs,
        )
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x`` by its root mean square over ``reduction_axes``."""
        return self._apply_over_axes(x, mask=mask, use_mean=False)


class GroupNorm(_Norm):
    """Group normalization: channels are split into groups normalized separately per example.

    Statistics are taken over ``reduction_axes`` (default: every axis but the first, the batch
    axis) within each group of ``group_size`` consecutive channels of the last axis.

    Args:
      num_features: number of channels (last axis).
      num_groups: number of groups (set it to None when giving ``group_size``).
      group_size: channels per group, instead of ``num_groups``.
      epsilon: added to the variance.
      dtype: output dtype; None promotes inputs and parameters together.
      param_dtype: dtype of ``scale`` and ``bias``.
      use_bias: learn a ``bias``.
      use_scale: learn a ``scale``.
      bias_init: bias initializer.
      scale_init: scale initializer.
      reduction_axes: axes to reduce (must include the last); None means all but the first.
      axis_name: a mapped axis over which to average the statistics.
      axis_index_groups: device groups for the cross-replica mean.
      use_fast_variance: one-pass variance.
      rngs: random streams for the parameter initializers.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: initializers.Initializer = initializers.zeros,
        scale_init: initializers.Initializer = initializers.ones,
        reduction_axes: Axes | None = None,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        rngs: Rngs | None = None,
    ):
        if (num_groups is None) == (group_size is None):
            raise ValueError(
                f"GroupNorm: give exactly one of num_groups and group_size, got num_groups="
                f"{num_groups} and group_size={group_size} (set num_groups=None to use group_size)"
            )
        if group_size is not None:
            if num_features % group_size:
                raise ValueError(
                    f"GroupNorm: num_features ({num_features}) must be a multiple of group_size "
                    f"({group_size})"
                )
            num_groups = num_features // group_size
        if num_groups <= 0 or num_features % num_groups:
            raise ValueError(
                f"GroupNorm: num_features ({num_features}) must be a positive multiple of "
                f"num_groups ({num_groups})"
            )
        self._init_norm(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            axis_name=axis_name, axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance, rngs=rngs,
        )
        self.num_groups = num_groups
        self.group_size = num_features // num_groups
        self.reduction_axes = reduction_axes

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize each group of channels of ``x`` (``(batch, ..., num_features)``)."""
        layer = type(self).__name__
        ndim = x.ndim
        _check_features(layer, x, (ndim - 1,), self.num_features)
        if self.reduction_axes is None:
            reduction_axes = tuple(range(1, ndim))
        else:
            reduction_axes = _canonical_axes(self.reduction_axes, ndim, layer)
            if ndim - 1 not in reduction_axes:
                raise ValueError(f"{layer}: reduction_axes must include the last (channel) axis")
        scale, bias = self._affine()
        return _group_forward(
            x, scale, bias, mask, num_groups=self.num_groups, reduction_axes=reduction_axes,
            dtype=self.dtype, epsilon=self.epsilon, axis_name=self.axis_name,
            axis_index_groups=_groups(self.axis_index_groups),
            use_fast_variance=self.use_fast_variance,
        )


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_groups", "reduction_axes", "dtype", "epsilon", "axis_name", "axis_index_groups",
        "use_fast_variance",
    ),
)
def _group_forward(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    mask: jax.Array | None,
    *,
    num_groups: int,
    reduction_axes: tuple[int, ...],
    dtype: Any,
    epsilon: float,
    axis_name: str | None,
    axis_index_groups: tuple | None,
    use_fast_variance: bool,
) -> jax.Array:
    """GroupNorm's computation: split the last axis into groups, normalize, scale and shift."""
    ndim = x.ndim
    grouped_shape = (*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
    xg = jnp.reshape(x, grouped_shape)
    # reduce over the chosen axes and within each group (the new last axis)
    group_axes = tuple(a for a in reduction_axes if a != ndim - 1) + (ndim,)
    if mask is not None:
        mask = jnp.reshape(jnp.broadcast_to(mask, x.shape), grouped_shape)
    mean, var = _compute_stats(
        xg, group_axes, dtype=dtype, axis_name=axis_name, axis_index_groups=axis_index_groups,
        use_fast_variance=use_fast_variance, mask=mask,
    )
    stats_shape = [1 if a in group_axes else n for a, n in enumerate(grouped_shape)]
    y = (xg - jnp.reshape(mean, stats_shape)) * jax.lax.rsqrt(
        jnp.reshape(var, stats_shape) + epsilon
    )
    y = jnp.reshape(y, x.shape)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return jnp.asarray(y, canonicalize_dtype(x, scale, bias, dtype=dtype))


class InstanceNorm(LayerNorm):
    """Instance normalization: each example and channel is normalized over the other axes.

    Statistics are taken over every axis except the first (batch) and ``feature_axes``.

    Args:
      num_features: size of the feature axis.
      epsilon: added to the variance.
      dtype: output dtype; None promotes inputs and parameters together.
      param_dtype: dtype of ``scale`` and ``bias``.
      use_bias: learn a ``bias``.
      use_scale: learn a ``scale``.
      bias_init: bias initializer.
      scale_init: scale initializer.
      feature_axes: the channel axis (or axes).
      axis_name: a mapped axis over which to average the statistics.
      axis_index_groups: device groups for the cross-replica mean.
      use_fast_variance: one-pass variance.
      rngs: random streams for the parameter initializers.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: initializers.Initializer = initializers.zeros,
        scale_init: initializers.Initializer = initializers.ones,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        rngs: Rngs | None = None,
    ):
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            reduction_axes=(), feature_axes=feature_axes, axis_name=axis_name,
            axis_index_groups=axis_index_groups, use_fast_variance=use_fast_variance, rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x`` over all axes but the batch axis and ``feature_axes``."""
        feature_axes = self._feature_axes(x, self.feature_axes)
        reduction_axes = tuple(a for a in range(1, x.ndim) if a not in feature_axes)
        return self._apply(x, reduction_axes, feature_axes, mask=mask)[0]
