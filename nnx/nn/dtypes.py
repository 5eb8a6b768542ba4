"""Dtype promotion shared by the layers (``dtype=None`` means "promote the inputs"), the optional
keywords they pass to their contraction ops, and the feature-size errors they raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp


def canonicalize_dtype(*args: Any, dtype: Any = None, inexact: bool = True) -> Any:
    """The computation dtype: ``dtype`` if given, else the promoted dtype of the non-None ``args``.

    Args:
      *args: arrays (or None, ignored) taking part in the computation.
      dtype: an explicit dtype, returned as is when not None.
      inexact: promote integer results to a floating dtype.
    """
    if dtype is None:
        dtype = jnp.result_type(*(jnp.asarray(a) for a in args if a is not None))
        if inexact and not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.promote_types(jnp.float32, dtype)
    return jnp.dtype(dtype)


PromoteDtypeFn = Callable[..., tuple]


def promote_dtype(args: tuple[Any, ...], *, dtype: Any = None, inexact: bool = True) -> tuple:
    """Cast every non-None array in ``args`` to the common dtype (see ``canonicalize_dtype``).

    Args:
      args: a tuple of arrays or None.
      dtype: the target dtype; None promotes the arrays together.
      inexact: promote to a floating dtype when every array is an integer.
    """
    dtype = canonicalize_dtype(*args, dtype=dtype, inexact=inexact)
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in args)


def op_kwargs(*, preferred_element_type: Any = None, out_sharding: Any = None) -> dict[str, Any]:
    """The optional keywords a layer passes to its op (``dot_general``, ``einsum``, a conv).

    Only the ones that are set are returned, so that a user-supplied op without these keywords
    keeps working when they are not used.

    Args:
      preferred_element_type: the op's accumulation and output dtype.
      out_sharding: the sharding of the op's output.
    """
    kwargs = {}
    if preferred_element_type is not None:
        kwargs["preferred_element_type"] = preferred_element_type
    if out_sharding is not None:
        kwargs["out_sharding"] = out_sharding
    return kwargs


def feature_error(layer: str, expected: Any, got: Any, shape: tuple, where: str) -> ValueError:
    """The error a layer raises when the input's feature size does not match its parameters."""
    return ValueError(
        f"{layer} expected inputs with {expected} features in {where}, got {got} "
        f"(input shape {tuple(shape)})"
    )


def check_last_axis(layer: str, inputs: Any, expected: int, where: str = "the last axis") -> None:
    """Raise ``feature_error`` unless the last axis of ``inputs`` has ``expected`` entries.

    Args:
      layer: the layer's name, first word of the message.
      inputs: the array to check (a scalar has no last axis and fails).
      expected: the feature size the layer's parameters need.
      where: how the message names the axis.
    """
    shape = jnp.shape(inputs)
    if not shape or shape[-1] != expected:
        got = shape[-1] if shape else "no axis"
        raise feature_error(layer, expected, got, shape, where)
