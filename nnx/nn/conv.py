"""Convolutions over channel-last inputs: ``Conv`` and ``ConvTranspose`` (1D, 2D or 3D)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nnx.module import Module
from nnx.nn import dtypes, initializers
from nnx.nn._params import NO_METADATA, create_param
from nnx.nn.dtypes import check_last_axis, op_kwargs
from nnx.rnglib import Rngs

PaddingLike = str | int | Sequence[int | tuple[int, int]]

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros


def _spatial_tuple(value: int | Sequence[int] | None, n: int, name: str, layer: str) -> tuple:
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{layer}: {name} needs {n} entries (one per spatial axis), got {value}")
    return value


def _canonical_padding(padding: PaddingLike, n: int, layer: str) -> str | tuple:
    """'SAME'/'VALID'/'CIRCULAR'/'REFLECT'/'CAUSAL' stay strings; ints become ``n`` ``(lo, hi)``
    pairs."""
    if isinstance(padding, str):
        padding = padding.upper()
        if padding not in ("SAME", "VALID", "CIRCULAR", "REFLECT", "CAUSAL", "SAME_LOWER"):
            raise ValueError(
                f"{layer}: padding must be 'SAME', 'SAME_LOWER', 'VALID', 'CIRCULAR', 'REFLECT', "
                f"'CAUSAL', an int or a sequence of (low, high) pairs, got {padding!r}"
            )
        return padding
    if isinstance(padding, int):
        return ((padding, padding),) * n
    pairs = []
    for p in padding:
        pairs.append((p, p) if isinstance(p, int) else tuple(p))
    if len(pairs) != n or any(len(p) != 2 for p in pairs):
        raise ValueError(
            f"{layer}: padding needs {n} (low, high) pairs (one per spatial axis), got {padding}"
        )
    return tuple(pairs)


class _ConvBase(Module):
    """What Conv and ConvTranspose share: the kernel and bias, the spatial options, the input
    check. ``_layer`` names the layer in error messages."""

    _layer = "Conv"

    def _init_conv(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        kernel_io: tuple[int, int],
        *,
        strides: int | Sequence[int] | None,
        padding: PaddingLike,
        kernel_dilation: int | Sequence[int] | None,
        use_bias: bool,
        mask: jax.Array | None,
        dtype: Any,
        param_dtype: Any,
        precision: Any,
        kernel_init: initializers.Initializer,
        bias_init: initializers.Initializer,
        promote_dtype: dtypes.PromoteDtypeFn,
        preferred_element_type: Any,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any],
        bias_metadata: Mapping[str, Any],
    ) -> None:
        """Create the ``kernel_size + kernel_io`` kernel and the bias, and set the attributes
        both layers have (``strides``, ``padding`` and ``kernel_dilation`` canonicalized)."""
        layer = self._layer
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        n = len(kernel_size)
        kernel_shape = kernel_size + kernel_io
        if mask is not None and tuple(mask.shape) != kernel_shape:
            raise ValueError(
                f"{layer}: mask must have the kernel's shape {kernel_shape}, got "
                f"{tuple(mask.shape)}"
            )
        self.kernel = create_param(
            layer, "kernel", kernel_init, rngs.params(), kernel_shape, param_dtype, kernel_metadata
        )
        self.bias = (
            create_param(
                layer, "bias", bias_init, rngs.params(), (out_features,), param_dtype,
                bias_metadata,
            )
            if use_bias
            else None
        )
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.kernel_shape = kernel_shape
        self.strides = _spatial_tuple(strides, n, "strides", layer)
        self.padding = _canonical_padding(padding, n, layer)
        self.kernel_dilation = _spatial_tuple(kernel_dilation, n, "kernel_dilation", layer)
        self.use_bias = use_bias
        self.mask = mask
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type

    def _check_input(self, inputs: jax.Array) -> int:
        """Validate the input's rank and feature size; return its number of batch axes."""
        n_spatial = len(self.kernel_size)
        shape = jnp.shape(inputs)
        n_batch = len(shape) - (n_spatial + 1)
        if n_batch < 0:
            raise ValueError(
                f"{self._layer} with kernel_size {self.kernel_size} expects inputs with at least "
                f"{n_spatial + 1} dims (spatial axes and features), got shape {shape}"
            )
        check_last_axis(self._layer, inputs, self.in_features)
        return n_batch

    def _arrays(self) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.kernel.value
        if self.mask is not None:
            kernel = kernel * self.mask
        return kernel, None if self.bias is None else self.bias.value


def _with_one_batch_axis(x: jax.Array, n_batch: int) -> jax.Array:
    return jnp.reshape(x, (-1, *x.shape[n_batch:]))


def _restore_batch(y: jax.Array, batch_shape: tuple, bias: jax.Array | None) -> jax.Array:
    if bias is not None:
        y = y + bias
    return jnp.reshape(y, batch_shape + y.shape[1:])


def _channel_last_spec(n_spatial: int) -> tuple[str, str, str]:
    spatial = "HWDEFG"[:n_spatial]
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


class Conv(_ConvBase):
    """A convolution over channel-last inputs ``(*batch, *spatial, in_features)``.

    The number of spatial axes is ``len(kernel_size)`` (an int kernel size means 1D). Inputs may
    have no batch axis or several; they are flattened to one and restored.

    Args:
      in_features: number of input channels.
      out_features: number of output channels.
      kernel_size: window size per spatial axis (an int means a 1D convolution).
      strides: int or one stride per spatial axis.
      padding: 'SAME', 'SAME_LOWER', 'VALID', 'CIRCULAR' (periodic), 'REFLECT' (mirrored),
        'CAUSAL' (1D), an int, or one int or ``(low, high)`` pair per spatial axis.
      input_dilation: int or one factor per spatial axis (dilates the input, ``lhs_dilation``).
      kernel_dilation: int or one factor per spatial axis (atrous convolution).
      feature_group_count: split the channels into this many groups (``in_features`` must be
        divisible by it); ``in_features`` groups gives a depthwise convolution.
      use_bias: add an ``(out_features,)`` bias.
      mask: an array of the kernel's shape multiplied into the kernel (masked convolutions).
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of the parameters.
      precision: passed to ``jax.lax.conv_general_dilated``.
      kernel_init: initializer of the
        ``kernel_size + (in_features // feature_group_count, out_features)`` kernel.
      bias_init: bias initializer.
      conv_general_dilated: the convolution function (``jax.lax.conv_general_dilated``
        signature).
      promote_dtype: casts ``(inputs, kernel, bias)`` to the computation dtype.
      preferred_element_type: accumulation and output dtype of the convolution.
      rngs: random streams; keys come from ``rngs.params()``.
      kernel_metadata: metadata of the ``kernel`` Param.
      bias_metadata: metadata of the ``bias`` Param.
    """

    _layer = "Conv"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        *,
        padding: PaddingLike = "SAME",
        input_dilation: int | Sequence[int] = 1,
        kernel_dilation: int | Sequence[int] = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: initializers.Initializer = default_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        conv_general_dilated: Callable[..., jax.Array] = jax.lax.conv_general_dilated,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = NO_METADATA,
        bias_metadata: Mapping[str, Any] = NO_METADATA,
    ):
        if in_features % feature_group_count or out_features % feature_group_count:
            raise ValueError(
                f"Conv: in_features ({in_features}) and out_features ({out_features}) must be "
                f"divisible by feature_group_count ({feature_group_count})"
            )
        kernel_io = (in_features // feature_group_count, out_features)
        self._init_conv(
            in_features, out_features, kernel_size, kernel_io,
            strides=strides, padding=padding, kernel_dilation=kernel_dilation, use_bias=use_bias,
            mask=mask, dtype=dtype, param_dtype=param_dtype, precision=precision,
            kernel_init=kernel_init, bias_init=bias_init, promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type, rngs=rngs,
            kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
        )
        if self.padding == "CAUSAL" and len(self.kernel_size) != 1:
            raise ValueError(
                f"Conv: 'CAUSAL' padding needs a 1D kernel, got kernel_size {self.kernel_size}"
            )
        self.input_dilation = _spatial_tuple(
            input_dilation, len(self.kernel_size), "input_dilation", "Conv"
        )
        self.feature_group_count = feature_group_count
        self.conv_general_dilated = conv_general_dilated

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Convolve ``inputs`` of shape ``(*batch, *spatial, in_features)``.

        Args:
          inputs: the input array.
          out_sharding: sharding of the output (passed to ``conv_general_dilated``).
        """
        n_batch = self._check_input(inputs)
        kernel, bias = self._arrays()
        return _conv(
            inputs, kernel, bias, n_batch=n_batch, strides=self.strides, padding=self.padding,
            input_dilation=self.input_dilation, kernel_dilation=self.kernel_dilation,
            feature_group_count=self.feature_group_count, precision=self.precision,
            dtype=self.dtype, conv_general_dilated=self.conv_general_dilated,
            promote_dtype=self.promote_dtype, preferred_element_type=self.preferred_element_type,
            out_sharding=out_sharding,
        )


@functools.partial(
    jax.jit,
    static_argnames=(
        "n_batch", "strides", "padding", "input_dilation", "kernel_dilation",
        "feature_group_count", "precision", "dtype", "conv_general_dilated", "promote_dtype",
        "preferred_element_type", "out_sharding",
    ),
)
def _conv(
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    n_batch: int,
    strides: tuple[int, ...],
    padding: str | tuple,
    input_dilation: tuple[int, ...],
    kernel_dilation: tuple[int, ...],
    feature_group_count: int,
    precision: Any,
    dtype: Any,
    conv_general_dilated: Callable[..., jax.Array],
    promote_dtype: dtypes.PromoteDtypeFn,
    preferred_element_type: Any,
    out_sharding: Any,
) -> jax.Array:
    """Conv's computation, compiled as one function (one compilation per eager call shape)."""
    batch_shape = inputs.shape[:n_batch]
    x = _with_one_batch_axis(inputs, n_batch)
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:-2], kernel_dilation, strict=True)]
    if padding in ("CIRCULAR", "REFLECT"):
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
        x = jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "reflect")
        padding = "VALID"
    elif padding == "CAUSAL":
        x = jnp.pad(x, [(0, 0), (dilated[0] - 1, 0), (0, 0)])
        padding = "VALID"
    x, kernel, bias = promote_dtype((x, kernel, bias), dtype=dtype)
    y = conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        lhs_dilation=input_dilation,
        rhs_dilation=kernel_dilation,
        dimension_numbers=_channel_last_spec(x.ndim - 2),
        feature_group_count=feature_group_count,
        precision=precision,
        **op_kwargs(preferred_element_type=preferred_element_type, out_sharding=out_sharding),
    )
    return _restore_batch(y, batch_shape, bias)


class ConvTranspose(_ConvBase):
    """A transposed convolution (``jax.lax.conv_transpose``) over channel-last inputs.

    Args:
      in_features: number of input channels.
      out_features: number of output channels.
      kernel_size: window size per spatial axis (an int means 1D).
      strides: int or one stride per spatial axis (the upsampling factor).
      padding: 'SAME', 'VALID', 'CIRCULAR' (output of size ``input * stride`` wrapped
        periodically), an int, or one int or ``(low, high)`` pair per spatial axis.
      kernel_dilation: int or one factor per spatial axis.
      use_bias: add an ``(out_features,)`` bias.
      mask: an array of the kernel's shape multiplied into the kernel.
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of the parameters.
      precision: passed to ``jax.lax.conv_transpose``.
      kernel_init: initializer of the ``kernel_size + (in_features, out_features)`` kernel.
      bias_init: bias initializer.
      transpose_kernel: flip the spatial axes and swap in/out of the kernel (the gradient of a
        ``Conv``).
      promote_dtype: casts ``(inputs, kernel, bias)`` to the computation dtype.
      preferred_element_type: accumulation and output dtype of the convolution.
      rngs: random streams; keys come from ``rngs.params()``.
      kernel_metadata: metadata of the ``kernel`` Param.
      bias_metadata: metadata of the ``bias`` Param.
    """

    _layer = "ConvTranspose"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        *,
        padding: PaddingLike = "SAME",
        kernel_dilation: int | Sequence[int] | None = None,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: initializers.Initializer = default_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        transpose_kernel: bool = False,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = NO_METADATA,
        bias_metadata: Mapping[str, Any] = NO_METADATA,
    ):
        kernel_io = (out_features, in_features) if transpose_kernel else (in_features, out_features)
        self._init_conv(
            in_features, out_features, kernel_size, kernel_io,
            strides=strides, padding=padding, kernel_dilation=kernel_dilation, use_bias=use_bias,
            mask=mask, dtype=dtype, param_dtype=param_dtype, precision=precision,
            kernel_init=kernel_init, bias_init=bias_init, promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type, rngs=rngs,
            kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
        )
        if self.padding in ("CAUSAL", "REFLECT"):
            raise ValueError(
                f"ConvTranspose: {self.padding!r} padding is only supported by Conv"
            )
        self.transpose_kernel = transpose_kernel

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Apply the transposed convolution to ``(*batch, *spatial, in_features)`` inputs."""
        n_batch = self._check_input(inputs)
        kernel, bias = self._arrays()
        return _conv_transpose(
            inputs, kernel, bias, n_batch=n_batch, strides=self.strides, padding=self.padding,
            kernel_dilation=self.kernel_dilation, transpose_kernel=self.transpose_kernel,
            precision=self.precision, dtype=self.dtype, promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type,
        )


@functools.partial(
    jax.jit,
    static_argnames=(
        "n_batch", "strides", "padding", "kernel_dilation", "transpose_kernel", "precision",
        "dtype", "promote_dtype", "preferred_element_type",
    ),
)
def _conv_transpose(
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    n_batch: int,
    strides: tuple[int, ...],
    padding: str | tuple,
    kernel_dilation: tuple[int, ...],
    transpose_kernel: bool,
    precision: Any,
    dtype: Any,
    promote_dtype: dtypes.PromoteDtypeFn,
    preferred_element_type: Any,
) -> jax.Array:
    """ConvTranspose's computation, compiled as one function."""
    batch_shape = inputs.shape[:n_batch]
    x = _with_one_batch_axis(inputs, n_batch)
    x, kernel, bias = promote_dtype((x, kernel, bias), dtype=dtype)
    circular = padding == "CIRCULAR"
    y = jax.lax.conv_transpose(
        x,
        kernel,
        strides,
        "VALID" if circular else padding,
        rhs_dilation=kernel_dilation,
        dimension_numbers=_channel_last_spec(x.ndim - 2),
        transpose_kernel=transpose_kernel,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if circular:
        y = _wrap_periodic(y, x.shape[1:-1], strides, transpose_kernel)
    return _restore_batch(y, batch_shape, bias)


def _wrap_periodic(
    y: jax.Array, in_spatial: tuple[int, ...], strides: tuple[int, ...], transpose_kernel: bool
) -> jax.Array:
    """Fold the full ('VALID') output onto a periodic grid of size ``input * stride``.

    The full output is padded to an odd number of periods, centred, and the periods are
    summed; for stride 1 and an odd kernel this equals a 'CIRCULAR' ``Conv``.
    """
    for i, (n_in, s) in enumerate(zip(in_spatial, strides, strict=True)):
        axis = i + 1
        period = n_in * s
        surplus = (period - y.shape[axis]) % (2 * period)
        lo = surplus // 2 if transpose_kernel else (surplus + 1) // 2
        pads = [(0, 0)] * y.ndim
        pads[axis] = (lo, surplus - lo)
        y = jnp.pad(y, pads)
        y = jnp.sum(jnp.reshape(y, y.shape[:axis] + (-1, period) + y.shape[axis + 1:]), axis)
    return y
