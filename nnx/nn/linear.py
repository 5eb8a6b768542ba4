"""Dense layers: ``Linear``, ``LinearGeneral``, ``Einsum`` and the ``Embed`` lookup table."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnx.module import Module
from nnx.nn import dtypes, initializers
from nnx.nn._params import NO_METADATA, create_param
from nnx.nn.conv import Conv, ConvTranspose  # noqa: F401 - also importable from here, as in Flax
from nnx.nn.dtypes import check_last_axis, feature_error, op_kwargs
from nnx.rnglib import Rngs

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros
default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)

Metadata = Mapping[str, Any]


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def _normalize_axes(axes: tuple[int, ...], ndim: int, layer: str) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{layer}: axis {a} is out of range for inputs with {ndim} dims")
        out.append(a % ndim)
    return tuple(out)


@functools.partial(
    jax.jit,
    static_argnames=(
        "dimension_numbers", "bias_shape", "dtype", "precision", "dot_general",
        "dot_general_cls", "promote_dtype", "preferred_element_type", "out_sharding",
    ),
)
def _contract(
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    dimension_numbers: tuple,
    bias_shape: tuple[int, ...],
    dtype: Any,
    precision: Any,
    dot_general: Callable[..., jax.Array] | None,
    dot_general_cls: Any,
    promote_dtype: dtypes.PromoteDtypeFn,
    preferred_element_type: Any,
    out_sharding: Any,
) -> jax.Array:
    """``dot_general(inputs, kernel) + bias`` (Linear and LinearGeneral), compiled as one
    function: one compilation per call signature instead of one per eager op.

    ``dot_general_cls``, when given, is instantiated once per trace and takes precedence over
    ``dot_general``; with neither, ``jax.lax.dot_general`` is used.
    """
    x, kernel, bias = promote_dtype((inputs, kernel, bias), dtype=dtype)
    if dot_general_cls is not None:
        dot_general = dot_general_cls()
    elif dot_general is None:
        dot_general = jax.lax.dot_general
    y = dot_general(
        x, kernel, dimension_numbers, precision=precision,
        **op_kwargs(preferred_element_type=preferred_element_type, out_sharding=out_sharding),
    )
    if bias is not None:
        y = y + jnp.reshape(bias, bias_shape)
    return y


class Linear(Module):
    """A dense layer: ``y = x @ kernel + bias`` over the last axis of ``x``.

    Args:
      in_features: size of the last input axis.
      out_features: size of the last output axis.
      use_bias: add a bias (``bias`` is None otherwise).
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of the parameters.
      precision: ``jax.lax.Precision`` passed to ``dot_general``.
      kernel_init: initializer of the ``(in_features, out_features)`` kernel.
      bias_init: initializer of the ``(out_features,)`` bias.
      dot_general: the contraction function (``jax.lax.dot_general`` signature).
      promote_dtype: ``promote_dtype((inputs, kernel, bias), dtype=dtype)`` returns the three
        arrays in the computation dtype (see ``nnx.nn.dtypes.promote_dtype``).
      preferred_element_type: accumulation and output dtype of ``dot_general``.
      rngs: random streams; the kernel key comes from ``rngs.params()``.
      kernel_metadata: metadata of the ``kernel`` Param (e.g. ``out_sharding``).
      bias_metadata: metadata of the ``bias`` Param.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: initializers.Initializer = default_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        dot_general: Callable[..., jax.Array] = jax.lax.dot_general,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Metadata = NO_METADATA,
        bias_metadata: Metadata = NO_METADATA,
    ):
        layer = type(self).__name__
        self.kernel = create_param(
            layer, "kernel", kernel_init, rngs.params(), (in_features, out_features),
            param_dtype, kernel_metadata,
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
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.dot_general = dot_general
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``.

        Args:
          inputs: the input array.
          out_sharding: sharding of the output (passed to ``dot_general``).
        """
        kernel = self.kernel.value
        # The kernel's own shape, not in_features: under shard_map it is the local block.
        check_last_axis("Linear", inputs, jnp.shape(kernel)[0])
        ndim = jnp.ndim(inputs)
        return _contract(
            inputs, kernel, None if self.bias is None else self.bias.value,
            dimension_numbers=(((ndim - 1,), (0,)), ((), ())), bias_shape=(jnp.shape(kernel)[-1],),
            dtype=self.dtype, precision=self.precision, dot_general=self.dot_general,
            dot_general_cls=None, promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type, out_sharding=out_sharding,
        )


class LinearGeneral(Module):
    """A dense layer contracting several input axes and producing several output axes.

    The kernel has shape ``batch_shape + in_features + out_features`` where ``batch_shape`` lists
    the sizes in ``batch_axis`` (input axes that are mapped over, not contracted). The output has
    the batch axes first, then the remaining input axes, then ``out_features``.

    Args:
      in_features: size(s) of the contracted input axes.
      out_features: size(s) of the new output axes.
      axis: the input axis or axes to contract (matching ``in_features``).
      batch_axis: ``{input_axis: size}`` for axes shared by input and kernel.
      use_bias: add a bias of shape ``batch_shape + out_features``.
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of the parameters.
      kernel_init: initializer called with the flattened shape
        ``batch_shape + (prod(in_features), prod(out_features))`` (so fan-in is correct).
      bias_init: initializer called with ``batch_shape + (prod(out_features),)``.
      precision: passed to ``dot_general``.
      promote_dtype: casts ``(inputs, kernel, bias)`` to the computation dtype.
      dot_general: the contraction function (default ``jax.lax.dot_general``).
      dot_general_cls: a class whose instances are the contraction function, instantiated for
        each trace of the call (takes precedence over ``dot_general``).
      preferred_element_type: accumulation and output dtype of the contraction.
      rngs: random streams; keys come from ``rngs.params()``.
      kernel_metadata: metadata of the ``kernel`` Param.
      bias_metadata: metadata of the ``bias`` Param.
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        axis: int | Sequence[int] = -1,
        batch_axis: Mapping[int, int] | None = None,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: initializers.Initializer = default_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        precision: Any = None,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        dot_general: Callable[..., jax.Array] | None = None,
        dot_general_cls: Any = None,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Metadata = NO_METADATA,
        bias_metadata: Metadata = NO_METADATA,
    ):
        self.in_features = _as_tuple(in_features)
        self.out_features = _as_tuple(out_features)
        self.axis = _as_tuple(axis)
        if len(self.axis) != len(self.in_features):
            raise ValueError(
                f"LinearGeneral: axis {self.axis} and in_features {self.in_features} must have "
                f"the same length"
            )
        self.batch_axis = tuple(sorted((batch_axis or {}).items()))
        batch_shape = tuple(size for _, size in self.batch_axis)
        n_in = int(np.prod(self.in_features))
        n_out = int(np.prod(self.out_features))
        self.kernel = create_param(
            "LinearGeneral", "kernel", kernel_init, rngs.params(),
            batch_shape + self.in_features + self.out_features, param_dtype, kernel_metadata,
            init_shape=(*batch_shape, n_in, n_out),
        )
        self.bias = (
            create_param(
                "LinearGeneral", "bias", bias_init, rngs.params(), batch_shape + self.out_features,
                param_dtype, bias_metadata, init_shape=(*batch_shape, n_out),
            )
            if use_bias
            else None
        )
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.dot_general = dot_general
        self.dot_general_cls = dot_general_cls
        self.preferred_element_type = preferred_element_type

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Contract ``inputs`` over ``axis`` with the kernel.

        Args:
          inputs: the input array.
          out_sharding: sharding of the output (passed to the contraction).
        """
        shape = jnp.shape(inputs)
        ndim = len(shape)
        axes = _normalize_axes(self.axis, ndim, "LinearGeneral")
        batch_dims = _normalize_axes(tuple(a for a, _ in self.batch_axis), ndim, "LinearGeneral")
        got = tuple(shape[a] for a in axes)
        if got != self.in_features:
            raise feature_error(
                "LinearGeneral", self.in_features, got, shape, f"axes {self.axis}"
            )
        batch_sizes = tuple(size for _, size in self.batch_axis)
        if tuple(shape[a] for a in batch_dims) != batch_sizes:
            raise ValueError(
                f"LinearGeneral expected batch axes {dict(self.batch_axis)} of sizes "
                f"{batch_sizes}, got {tuple(shape[a] for a in batch_dims)} (input shape {shape})"
            )
        n_batch = len(batch_dims)
        kernel_contract = tuple(range(n_batch, n_batch + len(axes)))
        n_free = ndim - len(axes) - n_batch
        return _contract(
            inputs, self.kernel.value, None if self.bias is None else self.bias.value,
            dimension_numbers=((axes, kernel_contract), (batch_dims, tuple(range(n_batch)))),
            bias_shape=batch_sizes + (1,) * n_free + self.out_features, dtype=self.dtype,
            precision=self.precision, dot_general=self.dot_general,
            dot_general_cls=self.dot_general_cls, promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type, out_sharding=out_sharding,
        )


def _split_einsum(einsum_str: str) -> tuple[str, str, str]:
    einsum_str = einsum_str.replace(" ", "")
    if "->" not in einsum_str or einsum_str.count(",") != 1:
        raise ValueError(
            f"Einsum expects an einsum_str with two operands and an explicit output, like "
            f"'...ij,jk->...ik', got {einsum_str!r}"
        )
    operands, out = einsum_str.split("->")
    lhs, rhs = operands.split(",")
    return lhs, rhs, out


def _operand_axes(labels: str, ndim: int) -> list[str | int]:
    """One entry per axis of an operand with ``ndim`` dims: its label, or for the axes that
    ``...`` stands for, their position counted from the right end of the ellipsis (-1 last),
    since ellipsis axes broadcast right-aligned across the operands."""
    if "..." not in labels:
        return list(labels)
    head, tail = labels.split("...")
    n = max(ndim - len(head) - len(tail), 0)
    return [*head, *range(-n, 0), *tail]


class Einsum(Module):
    """A layer computing ``einsum(einsum_str, inputs, kernel) + bias``.

    Args:
      einsum_str: two operands and an output, e.g. ``'bti,ihd->bthd'``.
      kernel_shape: shape of the kernel (the second operand).
      bias_shape: shape of the bias, or None for no bias. The bias is laid along the output
        axes that the kernel has (in output order) and broadcasts over the others.
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of the parameters.
      precision: passed to ``einsum_op``.
      kernel_init: kernel initializer.
      bias_init: bias initializer.
      promote_dtype: casts ``(inputs, kernel, bias)`` to the computation dtype.
      einsum_op: the einsum function (``jnp.einsum`` signature).
      preferred_element_type: accumulation and output dtype of the einsum.
      rngs: random streams; keys come from ``rngs.params()``.
      kernel_metadata: metadata of the ``kernel`` Param.
      bias_metadata: metadata of the ``bias`` Param.
    """

    def __init__(
        self,
        einsum_str: str,
        kernel_shape: int | Sequence[int],
        bias_shape: int | Sequence[int] | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: initializers.Initializer = default_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        einsum_op: Callable[..., jax.Array] = jnp.einsum,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Metadata = NO_METADATA,
        bias_metadata: Metadata = NO_METADATA,
    ):
        _, rhs, _ = _split_einsum(einsum_str)
        kernel_shape = _as_tuple(kernel_shape)
        if "..." not in rhs and len(rhs) != len(kernel_shape):
            raise ValueError(
                f"Einsum: kernel labels {rhs!r} need {len(rhs)} dims, got kernel_shape "
                f"{kernel_shape}"
            )
        self.einsum_str = einsum_str.replace(" ", "")
        self.kernel_shape = kernel_shape
        self.bias_shape = None if bias_shape is None else _as_tuple(bias_shape)
        self.kernel = create_param(
            "Einsum", "kernel", kernel_init, rngs.params(), kernel_shape, param_dtype,
            kernel_metadata,
        )
        self.bias = (
            None
            if self.bias_shape is None
            else create_param(
                "Einsum", "bias", bias_init, rngs.params(), self.bias_shape, param_dtype,
                bias_metadata,
            )
        )
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.einsum_op = einsum_op
        self.preferred_element_type = preferred_element_type

    def __call__(
        self, inputs: jax.Array, einsum_str: str | None = None, out_sharding: Any = None
    ) -> jax.Array:
        """Apply the einsum; ``einsum_str`` overrides the constructor's for this call.

        Args:
          inputs: the first operand.
          einsum_str: the equation for this call (default: the constructor's).
          out_sharding: sharding of the output (passed to ``einsum_op``).
        """
        einsum_str = self.einsum_str if einsum_str is None else einsum_str.replace(" ", "")
        lhs, rhs, out = _split_einsum(einsum_str)
        shape = jnp.shape(inputs)
        x_axes = dict(zip(_operand_axes(lhs, len(shape)), shape, strict=False))
        k_axes = dict(zip(_operand_axes(rhs, len(self.kernel_shape)), self.kernel_shape, strict=False))
        for label in x_axes.keys() & k_axes.keys():
            sizes = (x_axes[label], k_axes[label])
            if sizes[0] != sizes[1] and not (isinstance(label, int) and 1 in sizes):
                where = (
                    f"the axis labelled {label!r} of {einsum_str!r}" if isinstance(label, str)
                    else f"the axes matched by '...' in {einsum_str!r}"
                )
                raise feature_error("Einsum", sizes[1], sizes[0], shape, where)
        bias_shape = None
        if self.bias is not None:
            n_ellipsis = max(sum(isinstance(a, int) for a in axes) for axes in (x_axes, k_axes))
            out_axes = _operand_axes(out, len(out.replace("...", "")) + n_ellipsis)
            bias_shape = tuple(k_axes.get(a, 1) for a in out_axes)
            if int(np.prod(bias_shape)) != int(np.prod(self.bias_shape)):
                raise ValueError(
                    f"Einsum: bias of shape {self.bias_shape} does not fit {einsum_str!r}: the "
                    f"output axes the kernel has give the bias shape {bias_shape}"
                )
        return _einsum(
            inputs, self.kernel.value, None if self.bias is None else self.bias.value,
            einsum_str=einsum_str, bias_shape=bias_shape, dtype=self.dtype,
            precision=self.precision, einsum_op=self.einsum_op, promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type, out_sharding=out_sharding,
        )


@functools.partial(
    jax.jit,
    static_argnames=(
        "einsum_str", "bias_shape", "dtype", "precision", "einsum_op", "promote_dtype",
        "preferred_element_type", "out_sharding",
    ),
)
def _einsum(
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    einsum_str: str,
    bias_shape: tuple[int, ...] | None,
    dtype: Any,
    precision: Any,
    einsum_op: Callable[..., jax.Array],
    promote_dtype: dtypes.PromoteDtypeFn,
    preferred_element_type: Any,
    out_sharding: Any,
) -> jax.Array:
    """Einsum's computation, compiled as one function."""
    x, kernel, bias = promote_dtype((inputs, kernel, bias), dtype=dtype)
    y = einsum_op(
        einsum_str, x, kernel, precision=precision,
        **op_kwargs(preferred_element_type=preferred_element_type, out_sharding=out_sharding),
    )
    if bias is not None:
        y = y + jnp.reshape(bias, bias_shape)
    return y


class Embed(Module):
    """A lookup table mapping integer ids to ``features``-sized vectors.

    Ids index the table from 0; negative ids count from the end (``-1`` is the last row) and
    ids outside ``[-num_embeddings, num_embeddings)`` give NaN vectors (``jnp.take``'s fill
    mode), as in Flax. A table of one row is broadcast to every id.

    Args:
      num_embeddings: number of rows of the table.
      features: size of each embedding vector.
      dtype: dtype of the returned embeddings; None keeps the table's dtype.
      param_dtype: dtype of the ``embedding`` table.
      embedding_init: initializer of the ``(num_embeddings, features)`` table.
      promote_dtype: casts ``(embedding,)`` (in ``__call__``, with ``inexact=False``) or
        ``(query, embedding)`` (in ``attend``) to ``dtype``.
      rngs: random streams; the key comes from ``rngs.params()``.
      embedding_metadata: metadata of the ``embedding`` Param.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: initializers.Initializer = default_embed_init,
        promote_dtype: dtypes.PromoteDtypeFn = dtypes.promote_dtype,
        rngs: Rngs,
        embedding_metadata: Metadata = NO_METADATA,
    ):
        self.embedding = create_param(
            "Embed", "embedding", embedding_init, rngs.params(), (num_embeddings, features),
            param_dtype, embedding_metadata,
        )
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = self.embedding.dtype if dtype is None else dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Look up integer ids: the result has shape ``inputs.shape + (features,)``.

        Args:
          inputs: integer ids of any shape.
          out_sharding: sharding of the result.
        """
        inputs = jnp.asarray(inputs)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer ids, got inputs of dtype {inputs.dtype}")
        (embedding,) = self.promote_dtype((self.embedding.value,), dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(embedding, inputs.shape + (self.features,))
        if out_sharding is not None:
            take = jax.sharding.auto_axes(
                lambda table, ids: jnp.take(table, ids, axis=0), out_sharding=out_sharding
            )
            return take(embedding, inputs)
        return jnp.take(embedding, inputs, axis=0)

    def attend(self, query: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Dot ``query`` (``(..., features)``) with every embedding: ``(..., num_embeddings)``.

        Used to share the table with an output projection (weight tying).

        Args:
          query: the query vectors.
          out_sharding: sharding of the result.
        """
        check_last_axis("Embed.attend", query, self.features)
        query, embedding = self.promote_dtype((query, self.embedding.value), dtype=self.dtype)
        return jnp.dot(query, embedding.T, **op_kwargs(out_sharding=out_sharding))
