"""The batch format: ``(inputs, targets)``, ``(inputs, targets, sample_weight)``, ``(inputs,)``
or a dict whose parts are named by ``BatchKeys``; splitting batches into parts, weighting,
gathering rows on the device, padding and stacking on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchKeys:
    """Names of the parts of dict batches."""

    inputs: Any = "x"
    target: str = "y"
    weight: str = "sample_weight"


def is_array(x: Any) -> bool:
    """Whether ``x`` is a numpy or JAX array (or another object with shape, dtype, __array__)."""
    if isinstance(x, np.ndarray | jax.Array):
        return True
    return hasattr(x, "__array__") and hasattr(x, "shape") and hasattr(x, "dtype")


def normalize_batch(batch: Any) -> Any:
    """Lists become tuples, mappings become dicts, array-likes become numpy arrays."""
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return tuple(normalize_batch(b) if isinstance(b, list | tuple | dict) else as_array(b) for b in batch)
    if isinstance(batch, dict):
        return {k: normalize_batch(v) if isinstance(v, list | tuple | dict) else as_array(v) for k, v in batch.items()}
    return jax.tree.map(as_array, batch)


def as_array(x: Any) -> Any:
    if isinstance(x, jax.Array | np.ndarray):
        return x
    return np.asarray(x)


def batch_parts(batch: Any, keys: BatchKeys) -> tuple[Any, Any, Any]:
    """Split a batch into ``(inputs, targets, sample_weight)``; absent parts are None."""
    if isinstance(batch, dict):
        if isinstance(keys.inputs, str):
            inputs = batch.get(keys.inputs)
        else:
            inputs = tuple(batch[k] for k in keys.inputs)
        return inputs, batch.get(keys.target), batch.get(keys.weight)
    if isinstance(batch, tuple):
        if len(batch) == 1:
            return batch[0], None, None
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) == 3:
            return batch
        raise ValueError(
            f"A batch tuple must be (inputs,), (inputs, targets) or (inputs, targets, "
            f"sample_weight); got a tuple of {len(batch)} parts. Pack several inputs as a "
            "tuple: ((x1, x2), y)."
        )
    return batch, None, None


def with_weights(batch: Any, weights: Any, keys: BatchKeys) -> Any:
    """The batch with its sample weights replaced by ``weights``."""
    if isinstance(batch, dict):
        return {**batch, keys.weight: weights}
    inputs, targets, _ = batch_parts(batch, keys)
    return (inputs, targets, weights)


def class_weights(targets: Any, table: dict[int, float]) -> np.ndarray:
    """Per-example weights looked up from integer (or one-hot) ``targets`` in ``table``."""
    t = np.asarray(jax.device_get(targets))
    if t.ndim == 2 and t.shape[1] > 1:
        t = t.argmax(axis=1)
    elif np.issubdtype(t.dtype, np.floating) and not np.all(t == np.round(t)):
        raise ValueError(
            "class_weight needs class labels as targets (integers or one-hot rows); these "
            "targets are non-integer floats (a regression?). Use sample_weight instead."
        )
    t = t.reshape(t.shape[0], -1)[:, 0].astype(np.int64)
    size = max(int(t.max(initial=0)), max(table)) + 1
    lookup = np.ones(size, np.float32)
    for k, v in table.items():
        lookup[int(k)] = v
    return lookup[t]


# -- inside compiled steps ---------------------------------------------------------------


def gather(batch: Any, indices: jax.Array) -> Any:
    """Rows ``indices`` of every leaf of an on-device batch (traced)."""
    return jax.tree.map(lambda a: jnp.take(a, indices, axis=0, mode="clip"), batch)


def masked_gather(batch: Any, start: jax.Array, size: int, n: jax.Array, keys: BatchKeys) -> Any:
    """Rows ``start .. start+size`` in order; rows past ``n`` repeat the last one, weight 0."""
    idx = start + jnp.arange(size)
    return _weighted_by(gather(batch, jnp.minimum(idx, n - 1)), idx < n, keys)


def _weighted_by(rows: Any, valid: jax.Array, keys: BatchKeys) -> Any:
    """``rows`` with their weights multiplied by ``valid`` (0 for padding rows); a batch of
    inputs alone (predict) is returned as it is."""
    _, _, weights = batch_parts(rows, keys)
    valid = valid.astype(jnp.float32)
    weights = valid if weights is None else weights.astype(jnp.float32) * valid
    if isinstance(rows, tuple) and len(rows) == 1:
        return rows
    return with_weights(rows, weights, keys)


def block_batch(
    blocks: Any, perm: jax.Array | None, n: jax.Array | None, pos: jax.Array, size: int,
    keys: BatchKeys, masked: bool,
) -> Any:
    """The batch at position ``pos`` of data laid out in blocks (``ArrayData.block``): block
    ``pos`` (its first ``size`` rows), taken without moving rows between the devices the
    blocks are split over; through ``perm`` (rows of the flat order) when given. ``masked``:
    rows past ``n`` repeat the last real row and weigh 0, as ``masked_gather``."""
    block = jax.tree.leaves(blocks)[0].shape[1]
    if perm is not None:
        idx = jax.lax.dynamic_slice(perm, (pos * block,), (size,))
        return jax.tree.map(lambda a: a[idx // block, idx % block], blocks)
    rows = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, pos, 0, keepdims=False)[:size], blocks)
    if not masked:
        return rows
    valid = pos * block + jnp.arange(size) < n
    last = jax.tree.map(lambda a: a[(n - 1) // block, (n - 1) % block], blocks)
    rows = jax.tree.map(
        lambda r, z: jnp.where(valid.reshape(-1, *([1] * (r.ndim - 1))), r, z), rows, last
    )
    return _weighted_by(rows, valid, keys)


# -- host-side batch shaping --------------------------------------------------------------


def batch_size_of(batch: Any) -> int:
    """The leading dimension of a batch."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("A batch has no arrays.")
    return int(np.shape(leaves[0])[0])


def pad_batch(batch: Any, size: int, keys: BatchKeys, add_weights: bool = True) -> Any:
    """Pad a batch to ``size`` rows by repeating its last row; the pad rows weigh 0."""
    n = batch_size_of(batch)
    pad = size - n

    def grow(a: Any) -> Any:
        a = np.asarray(a) if not isinstance(a, jax.Array) else a
        if pad == 0:
            return a
        tail = jnp.repeat(a[-1:], pad, axis=0) if isinstance(a, jax.Array) else np.repeat(a[-1:], pad, axis=0)
        return jnp.concatenate([a, tail]) if isinstance(a, jax.Array) else np.concatenate([a, tail])

    padded = jax.tree.map(grow, batch)
    if not add_weights:
        return padded
    valid = np.zeros(size, np.float32)
    valid[:n] = 1.0
    _, _, weights = batch_parts(batch, keys)
    if weights is not None:
        valid[:n] *= np.asarray(jax.device_get(weights), np.float32)
    if isinstance(padded, tuple) and len(padded) == 1:
        return padded
    return with_weights(padded, valid, keys)


def stack(batches: list[Any]) -> Any:
    """Stack equal-structured host batches along a new leading axis."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


def shapes_of(batch: Any) -> Any:
    """A hashable description of a batch's structure and leaf shapes/dtypes."""
    leaves, treedef = jax.tree.flatten(batch)
    return treedef, tuple((tuple(np.shape(x)), str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype)) for x in leaves)
