"""Attention masks: ``[batch..., 1, q_length, kv_length]`` arrays that are True (or 1) where a
query may attend to a key: padding masks, causal masks, and their combination."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


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


__all__ = ["combine_masks", "make_attention_mask", "make_causal_mask"]
