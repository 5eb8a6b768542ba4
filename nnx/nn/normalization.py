"""Normalization layers: ``BatchNorm``, ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``InstanceNorm``.

Each layer first casts its input and parameters with its ``promote_dtype`` function (the default
casts them to ``dtype``, or to their common dtype when ``dtype`` is None, as Flax NNX does); the
statistics are then computed in at least float32. ``promote_dtype=lambda args, **kw: args``
skips the cast (Linen's behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnx.module import Module
from nnx.nn import dtypes, initializers
from nnx.nn._params import NO_METADATA, create_param
from nnx.nn._statistics import moving_average, norm_forward
from nnx.nn.dtypes import feature_error
from nnx.nn.weight_norm import SpectralNorm, WeightNorm  # noqa: F401 - Flax's module for them
from nnx.rnglib import Rngs
from nnx.variablelib import BatchStat

Axes = int | Sequence[int]
Metadata = Mapping[str, Any]


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


def _groups(axis_index_groups: Any) -> tuple | None:
    """``axis_index_groups`` as nested tuples (a hashable, static argument)."""
    if axis_index_groups is None:
        return None
    return tuple(tuple(group) for group in axis_index_groups)


class _Norm(Module):
    """What the normalization layers share: the optional ``scale`` and ``bias`` Params, the
    options of the statistics, and the call of the compiled forward pass."""

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
        promote_dtype: dtypes.PromoteDtypeFn,
        rngs: Rngs | None,
        bias_metadata: Metadata,
        scale_metadata: Metadata,
    ) -> None:
        """Create ``scale`` then ``bias`` (each None when off) and set the common attributes."""
        layer = type(self).__name__
        if (use_bias or use_scale) and rngs is None:
            raise ValueError(f"{layer} needs rngs= to create its scale and bias")
        shape = (num_features,)
        self.scale = (
            create_param(
                layer, "scale", scale_init, rngs.params(), shape, param_dtype, scale_metadata
            )
            if use_scale
            else None
        )
        self.bias = (
            create_param(layer, "bias", bias_init, rngs.params(), shape, param_dtype, bias_metadata)
            if use_bias
            else None
        )
        self.num_features = num_features
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.param_dtype = param_dtype
        self.epsilon = epsilon
        self.dtype = dtype
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def _feature_axes(self, x: jax.Array, axes: Axes) -> tuple[int, ...]:
        """``axes`` as sorted non-negative axes of ``x``, checked to hold ``num_features``."""
        layer = type(self).__name__
        feature_axes = _canonical_axes(axes, x.ndim, layer)
        _check_features(layer, x, feature_axes, self.num_features)
        return feature_axes

    def _apply(
        self,
        x: jax.Array,
        reduction_axes: tuple[int, ...],
        feature_axes: tuple[int, ...],
        *,
        mask: jax.Array | None,
        stats: tuple[jax.Array, jax.Array] | None = None,
        use_stats: bool = False,
        use_mean: bool = True,
        groups: int | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``norm_forward`` with this layer's parameters and options: ``(y, mean, var)``."""
        return norm_forward(
            x,
            None if self.scale is None else self.scale.value,
            None if self.bias is None else self.bias.value,
            mask, stats, reduction_axes=reduction_axes, feature_axes=feature_axes,
            dtype=self.dtype, epsilon=self.epsilon, axis_name=self.axis_name,
            axis_index_groups=_groups(self.axis_index_groups), use_mean=use_mean,
            use_fast_variance=self.use_fast_variance, use_stats=use_stats, groups=groups,
            promote_dtype=self.promote_dtype,
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
      promote_dtype: casts ``(x, mean, var, scale, bias)`` to the computation dtype.
      rngs: random streams for the parameter initializers.
      bias_metadata: metadata of the ``bias`` Param.
      scale_metadata: metadata of the ``scale`` Param.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
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
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs | None = None,
        bias_metadata: Metadata = NO_METADATA,
        scale_metadata: Metadata = NO_METADATA,
    ):
        self.mean = BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = BatchStat(jnp.ones((num_features,), jnp.float32))
        self._init_norm(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            axis_name=axis_name, axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
            bias_metadata=bias_metadata, scale_metadata=scale_metadata,
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
        if use_running_average is None:
            raise ValueError(
                "BatchNorm: no use_running_average was given; pass it to the constructor or to "
                "the call, or set it with model.train() / model.eval()"
            )
        feature_axes = self._feature_axes(x, self.axis)
        reduction_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
        running = (self.mean.value, self.var.value)
        y, mean, var = self._apply(
            x, reduction_axes, feature_axes, mask=mask, stats=running,
            use_stats=bool(use_running_average),
        )
        if not use_running_average:
            self.mean.value, self.var.value = moving_average(
                running, (mean, var), (self.momentum, 1 - self.momentum)
            )
        return y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """The hook ``nnx.view`` calls: set ``use_running_average`` when given."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


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
      promote_dtype: casts ``(x, scale, bias)`` to the computation dtype.
      rngs: random streams for the parameter initializers.
      bias_metadata: metadata of the ``bias`` Param.
      scale_metadata: metadata of the ``scale`` Param.
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
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs | None = None,
        bias_metadata: Metadata = NO_METADATA,
        scale_metadata: Metadata = NO_METADATA,
    ):
        self._init_norm(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            axis_name=axis_name, axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
            bias_metadata=bias_metadata, scale_metadata=scale_metadata,
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
      promote_dtype: casts ``(x, scale)`` to the computation dtype.
      rngs: random streams for the parameter initializer.
      scale_metadata: metadata of the ``scale`` Param.
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
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs | None = None,
        scale_metadata: Metadata = NO_METADATA,
    ):
        self._init_norm(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=False, use_scale=use_scale, bias_init=initializers.zeros,
            scale_init=scale_init, axis_name=axis_name, axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
            bias_metadata=NO_METADATA, scale_metadata=scale_metadata,
        )
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
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
      promote_dtype: casts ``(x, scale, bias)`` to the computation dtype.
      rngs: random streams for the parameter initializers.
      bias_metadata: metadata of the ``bias`` Param.
      scale_metadata: metadata of the ``scale`` Param.
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
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs | None = None,
        bias_metadata: Metadata = NO_METADATA,
        scale_metadata: Metadata = NO_METADATA,
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
            use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
            bias_metadata=bias_metadata, scale_metadata=scale_metadata,
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
        return self._apply(
            x, reduction_axes, (ndim - 1,), mask=mask, groups=self.num_groups
        )[0]


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
      feature_axes: the channel axis (or axes); it may not include the batch axis 0.
      axis_name: a mapped axis over which to average the statistics.
      axis_index_groups: device groups for the cross-replica mean.
      use_fast_variance: one-pass variance.
      promote_dtype: casts ``(x, scale, bias)`` to the computation dtype.
      rngs: random streams for the parameter initializers.
      bias_metadata: metadata of the ``bias`` Param.
      scale_metadata: metadata of the ``scale`` Param.
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
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs | None = None,
        bias_metadata: Metadata = NO_METADATA,
        scale_metadata: Metadata = NO_METADATA,
    ):
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            reduction_axes=(), feature_axes=feature_axes, axis_name=axis_name,
            axis_index_groups=axis_index_groups, use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype, rngs=rngs, bias_metadata=bias_metadata,
            scale_metadata=scale_metadata,
        )

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x`` over all axes but the batch axis and ``feature_axes``."""
        feature_axes = self._feature_axes(x, self.feature_axes)
        if 0 in feature_axes:
            raise ValueError(
                f"InstanceNorm: feature_axes {self.feature_axes} include axis 0, which is the "
                f"batch axis (input shape {tuple(x.shape)})"
            )
        reduction_axes = tuple(a for a in range(1, x.ndim) if a not in feature_axes)
        return self._apply(x, reduction_axes, feature_axes, mask=mask)[0]
