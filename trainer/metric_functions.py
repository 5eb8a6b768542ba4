"""Per-example metric functions and the table of their names.

Each function ``fn(predictions, targets)`` returns one float32 value per example (extra axes
averaged), which the running state keeps as a weighted mean (``means``, see ``metrics.py``).
Predictions are logits, as the built-in losses take them. ``NAMED`` maps the names accepted in
``Trainer(metrics=...)`` to the functions; ``CANONICAL`` gives the log name of each alias.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def trailing_mean(values: jax.Array) -> jax.Array:
    """float32 values with every axis after the first averaged (one value per example)."""
    values = values.astype(jnp.float32)
    return values if values.ndim <= 1 else values.reshape(values.shape[0], -1).mean(axis=1)


def is_binary(predictions: jax.Array) -> bool:
    """Whether the predictions are one binary output: one column, or none."""
    return predictions.ndim == 1 or predictions.shape[-1] == 1


def accuracy(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example accuracy: argmax for class scores, ``logit > 0`` for one binary column."""
    if is_binary(predictions):
        return binary_accuracy(predictions, targets)
    return categorical_accuracy(predictions, targets)


def binary_accuracy(predictions: jax.Array, targets: jax.Array, threshold: float = 0.0) -> jax.Array:
    """Per-example share of the outputs on the targets' side of ``threshold`` (logits: 0).

    Targets are 0/1 (or probabilities, positive above 0.5), one per output; every column is
    a binary output (multi-label).
    """
    targets = jnp.asarray(targets)
    if targets.shape != predictions.shape and targets.size == predictions.size:
        targets = targets.reshape(predictions.shape)
    return trailing_mean((predictions > threshold) == (targets > 0.5))


def categorical_accuracy(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example: whether the argmax of the scores is the target class (integer labels, of
    shape (...) or (..., 1), or one-hot rows)."""
    return trailing_mean(jnp.argmax(predictions, axis=-1) == class_labels(predictions, targets))


def class_labels(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Integer class labels of shape ``predictions.shape[:-1]`` from labels or one-hot rows."""
    targets = jnp.asarray(targets)
    if targets.shape == predictions.shape:
        return jnp.argmax(targets, axis=-1)
    if targets.ndim == predictions.ndim:
        targets = targets[..., 0]
    return targets.astype(jnp.int32)


def top_k_accuracy(predictions: jax.Array, targets: jax.Array, k: int = 5) -> jax.Array:
    """Per-example: whether the integer label is among the ``k`` highest scores."""
    targets = jnp.asarray(targets)
    if targets.ndim == predictions.ndim:
        targets = targets[..., 0]
    _, top = jax.lax.top_k(predictions, min(k, predictions.shape[-1]))
    return trailing_mean(jnp.any(top == targets[..., None], axis=-1))


def mae(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean absolute error."""
    targets = jnp.asarray(targets, predictions.dtype).reshape(predictions.shape)
    return trailing_mean(jnp.abs(predictions - targets))


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean squared error."""
    targets = jnp.asarray(targets, predictions.dtype).reshape(predictions.shape)
    return trailing_mean(jnp.square(predictions - targets))


NAMED: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "accuracy": accuracy,
    "acc": accuracy,
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": categorical_accuracy,
    "top_k_accuracy": top_k_accuracy,
    "mae": mae,
    "mean_absolute_error": mae,
    "mse": mse,
    "mean_squared_error": mse,
}
CANONICAL: dict[str, str] = {
    "acc": "accuracy",
    "mean_absolute_error": "mae",
    "mean_squared_error": "mse",
}
