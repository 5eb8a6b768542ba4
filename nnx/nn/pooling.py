"""Pooling over the spatial axes of channel-last inputs: ``pool``, ``max_pool``, ``avg_pool``,
``min_pool``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PaddingLike = str | Sequence[tuple[int, int]]


def pool(
    inputs: jax.Array,
    init: Any,
    reduce_fn: Callable[[Any, Any], Any],
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> jax.Array:
    """Reduce each window of ``inputs`` with ``reduce_fn`` (``jax.lax.reduce_window``).

    ``inputs`` has shape ``(*batch, *spatial, features)`` with ``len(window_shape)`` spatial axes;
    any number of batch axes (including none) is allowed and the feature axis is not pooled.

    Args:
      inputs: the array to pool.
      init: the reduction's identity (0 for sums, -inf for max).
      reduce_fn: a binary reduction such as ``jax.lax.add`` or ``jax.lax.max``.
      window_shape: window size per spatial axis.
      strides: step per spatial axis (default: 1 everywhere).
      padding: 'SAME', 'VALID', or one ``(low, high)`` pair per spatial axis.
    """
    window_shape = tuple(window_shape)
    n = len(window_shape)
    strides = (1,) * n if strides is None else tuple(strides)
    if len(strides) != n:
        raise ValueError(
            f"pool: strides {strides} needs one entry per window axis {window_shape}"
        )
    n_batch = jnp.ndim(inputs) - (n + 1)
    if n_batch < 0:
        raise ValueError(
            f"pool: window_shape {window_shape} needs inputs with at least {n + 1} dims "
            f"(spatial axes and features), got shape {jnp.shape(inputs)}"
        )
    dims = (1,) * n_batch + window_shape + (1,)
    steps = (1,) * n_batch + strides + (1,)
    if not isinstance(padding, str):
        pairs = tuple(tuple(p) for p in padding)
        if len(pairs) != n or any(len(p) != 2 for p in pairs):
            raise ValueError(
                f"pool: padding needs {n} (low, high) pairs (one per window axis), got {padding}"
            )
        padding = ((0, 0),) * n_batch + pairs + ((0, 0),)
    return jax.lax.reduce_window(inputs, init, reduce_fn, dims, steps, padding)


def max_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> jax.Array:
    """The maximum of each window (padding counts as -inf).

    Args:
      inputs: ``(*batch, *spatial, features)``.
      window_shape: window size per spatial axis.
      strides: step per spatial axis (default 1).
      padding: 'SAME', 'VALID', or ``(low, high)`` pairs.
    """
    return pool(inputs, -jnp.inf, jax.lax.max, window_shape, strides, padding)


def min_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> jax.Array:
    """The minimum of each window (padding counts as +inf).

    Args:
      inputs: ``(*batch, *spatial, features)``.
      window_shape: window size per spatial axis.
      strides: step per spatial axis (default 1).
      padding: 'SAME', 'VALID', or ``(low, high)`` pairs.
    """
    return pool(inputs, jnp.inf, jax.lax.min, window_shape, strides, padding)


def avg_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
    """The mean of each window.

    Args:
      inputs: ``(*batch, *spatial, features)``.
      window_shape: window size per spatial axis.
      strides: step per spatial axis (default 1).
      padding: 'SAME', 'VALID', or ``(low, high)`` pairs.
      count_include_pad: divide by the full window size (padded zeros count); when False,
        divide by the number of real entries in each window.
    """
    total = pool(inputs, 0.0, jax.lax.add, window_shape, strides, padding)
    if count_include_pad:
        return total / np.prod(window_shape)
    n = len(tuple(window_shape))
    spatial = jnp.shape(inputs)[-(n + 1):-1]
    counts = pool(jnp.ones((*spatial, 1), total.dtype), 0.0, jax.lax.add, window_shape, strides, padding)
    return total / counts
