"""Dense layers: ``Linear``, ``LinearGeneral``, ``Einsum`` and the ``Embed`` lookup table."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnx.module import Module
from nnx.nn import initializers
from nnx.nn.dtypes import check_last_axis, feature_error, promote_dtype
from nnx.rnglib import Rngs
from nnx.variablelib import Param

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros
default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def _normalize_axes(axes: tuple[int, ...], ndim: int, layer: str) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{layer}: axis {a} is out of range for inputs with {ndim} dims")
        out.append(a % ndim)
    return tuple(out)


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
      rngs: random streams; the kernel key comes from ``rngs.params()``.
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
        rngs: Rngs,
    ):
        self.kernel = Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
        self.bias = (
            Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
        )
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.dot_general = dot_general

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Apply the layer to ``inputs`` of shape ``(..., in_features)``."""
        check_last_axis("Linear", inputs, self.in_features)
        bias = None if self.bias is None else self.bias.value
        return _dense(
            inputs, self.kernel.value, bias, dtype=self.dtype, precision=self.precision,
            dot_general=self.dot_general,
        )


@functools.partial(jax.jit, static_argnames=("dtype", "precision", "dot_general"))
def _dense(
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    dtype: Any,
    precision: Any,
    dot_general: Callable[..., jax.Array],
) -> jax.Array:
    """Linear's computation, compiled as one function (one compilation per eager call shape)."""
    x, kernel, bias = promote_dtype((inputs, kernel, bias), dtype=dtype)
    y = dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
    if bias is not None:
        y = y + bias
    return y


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
      precision: passed to ``dot_general``.
      kernel_init: initializer called with the flattened shape
        ``batch_shape + (prod(in_features), prod(out_features))`` (so fan-in is correct).
      bias_init: initializer called with ``batch_shape + (prod(out_features),)``.
      dot_general: the contraction function.
      rngs: random streams; keys come from ``rngs.params()``.
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
        precision: Any = None,
        kernel_init: initializers.Initializer = default_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        dot_general: Callable[..., jax.Array] = jax.lax.dot_general,
        rngs: Rngs,
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
        kernel = kernel_init(rngs.params(), (*batch_shape, n_in, n_out), param_dtype)
        self.kernel = Param(
            jnp.reshape(kernel, batch_shape + self.in_features + self.out_features)
        )
        if use_bias:
            bias = bias_init(rngs.params(), (*batch_shape, n_out), param_dtype)
            self.bias = Param(jnp.reshape(bias, batch_shape + self.out_features))
        else:
            self.bias = None
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.dot_general = dot_general

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Contract ``inputs`` over ``axis`` with the kernel."""
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
        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = promote_dtype((inputs, self.kernel.value, bias), dtype=self.dtype)
        n_batch = len(batch_dims)
        kernel_contract = tuple(range(n_batch, n_batch + len(axes)))
        y = self.dot_general(
            x,
            kernel,
            ((axes, kernel_contract), (batch_dims, tuple(range(n_batch)))),
            precision=self.precision,
        )
        if bias is not None:
            n_free = ndim - len(axes) - n_batch
            bias_shape = batch_sizes + (1,) * n_free + self.out_features
            y = y + jnp.reshape(bias, bias_shape)
        return y


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


def _label_sizes(labels: str, shape: tuple[int, ...]) -> dict[str, int]:
    if "..." in labels:
        head, tail = labels.split("...")
        sizes = dict(zip(head, shape[: len(head)], strict=False))
        if tail:
            sizes.update(zip(tail, shape[-len(tail):], strict=False))
        return sizes
    return dict(zip(labels, shape, strict=False))


class Einsum(Module):
    """A layer computing ``jnp.einsum(einsum_str, inputs, kernel) + bias``.

    Args:
      einsum_str: two operands and an output, e.g. ``'bti,ihd->bthd'``.
      kernel_shape: shape of the kernel (the second operand).
      bias_shape: shape of the bias, or None for no bias; its axes are the kernel-only labels of
        the output, in output order, and it broadcasts over the others.
      dtype: computation dtype; None promotes inputs and parameters together.
      param_dtype: dtype of the parameters.
      precision: passed to ``jnp.einsum``.
      kernel_init: kernel initializer.
      bias_init: bias initializer.
      rngs: random streams; keys come from ``rngs.params()``.
    """

    def __init__(
        self,
        einsum_str: str,
        kernel_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: initializers.Initializer = default_kernel_init,
        bias_init: initializers.Initializer = default_bias_init,
        rngs: Rngs,
    ):
        _, rhs, _ = _split_einsum(einsum_str)
        if "..." not in rhs and len(rhs) != len(kernel_shape):
            raise ValueError(
                f"Einsum: kernel labels {rhs!r} need {len(rhs)} dims, got kernel_shape "
                f"{tuple(kernel_shape)}"
            )
        self.einsum_str = einsum_str.replace(" ", "")
        self.kernel_shape = tuple(kernel_shape)
        self.bias_shape = None if bias_shape is None else tuple(bias_shape)
        self.kernel = Param(kernel_init(rngs.params(), self.kernel_shape, param_dtype))
        self.bias = (
            None
            if bias_shape is None
            else Param(bias_init(rngs.params(), self.bias_shape, param_dtype))
        )
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision

    def __call__(self, inputs: jax.Array, einsum_str: str | None = None) -> jax.Array:
        """Apply the einsum; ``einsum_str`` overrides the constructor's for this call."""
        einsum_str = self.einsum_str if einsum_str is None else einsum_str.replace(" ", "")
        lhs, rhs, out = _split_einsum(einsum_str)
        shape = jnp.shape(inputs)
        x_sizes = _label_sizes(lhs, shape)
        k_sizes = _label_sizes(rhs, self.kernel_shape)
        for label in sorted(set(x_sizes) & set(k_sizes)):
            if x_sizes[label] != k_sizes[label]:
                raise feature_error(
                    "Einsum", k_sizes[label], x_sizes[label], shape,
                    f"the axis labelled {label!r} of {einsum_str!r}",
                )
        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = promote_dtype((inputs, self.kernel.value, bias), dtype=self.dtype)
        y = jnp.einsum(einsum_str, x, kernel, precision=self.precision)
        if bias is not None:
            out_labels = out.replace("...", "")
            kernel_only = [c for c in out_labels if c in k_sizes and c not in x_sizes]
            if bias.ndim == len(kernel_only):
                tail = out.split("...")[-1] if "..." in out else out
                bias_shape = tuple(k_sizes[c] if c in kernel_only else 1 for c in tail)
                bias = jnp.reshape(bias, bias_shape)
            y = y + bias
        return y


class Embed(Module):
    """A lookup table mapping integer ids to ``features``-sized vectors.

    Args:
      num_embeddings: number of rows of the table.
      features: size of each embedding vector.
      dtype: dtype of the returned embeddings; None keeps the table's dtype.
      param_dtype: dtype of the ``embedding`` table.
      embedding_init: initializer of the ``(num_embeddings, features)`` table.
      rngs: random streams; the key comes from ``rngs.params()``.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: initializers.Initializer = default_embed_init,
        rngs: Rngs,
    ):
        self.embedding = Param(
            embedding_init(rngs.params(), (num_embeddings, features), param_dtype)
        )
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.param_dtype = param_dtype

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Look up integer ids: the result has shape ``inputs.shape + (features,)``."""
        if not jnp.issubdtype(jnp.asarray(inputs).dtype, jnp.integer):
            raise ValueError(
                f"Embed expects integer ids, got inputs of dtype {jnp.asarray(inputs).dtype}"
            )
        (embedding,) = promote_dtype((self.embedding.value,), dtype=self.dtype, inexact=False)
        return jnp.take(embedding, inputs, axis=0)

    def attend(self, query: jax.Array) -> jax.Array:
        """Dot ``query`` (``(..., features)``) with every embedding: ``(..., num_embeddings)``.

        Used to share the table with an output projection (weight tying).
        """
        check_last_axis("Embed.attend", query, self.features)
        query, embedding = promote_dtype((query, self.embedding.value), dtype=self.dtype)
        return jnp.dot(query, embedding.T)
