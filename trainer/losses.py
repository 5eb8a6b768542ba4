"""Built-in per-example losses (on optax), the loss-inference table, and target checks.

Every built-in loss maps ``(predictions, targets)`` (optax's order; Keras uses the reverse) to one
value per example, shape ``(N,)``, so the Trainer can weight and mask it. Extra axes after the
batch axis (a sequence, say) are averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[[Any, Any], jax.Array]


def _per_example(values: jax.Array) -> jax.Array:
    """Mean over every axis but the first."""
    values = jnp.asarray(values)
    if values.ndim <= 1:
        return values
    return values.reshape(values.shape[0], -1).mean(axis=1)


def _match_shape(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Reshape ``targets`` of shape (N,) to (N, 1) and back, to match ``predictions``."""
    if targets.shape != predictions.shape and targets.size == predictions.size:
        return targets.reshape(predictions.shape)
    return targets


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean of ``(predictions - targets) ** 2``."""
    targets = _match_shape(predictions, jnp.asarray(targets, predictions.dtype))
    return _per_example(optax.squared_error(predictions, targets))


def mean_absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean of ``|predictions - targets|``."""
    targets = _match_shape(predictions, jnp.asarray(targets, predictions.dtype))
    return _per_example(jnp.abs(predictions - targets))


def huber(predictions: jax.Array, targets: jax.Array, delta: float = 1.0) -> jax.Array:
    """Per-example mean of optax's Huber loss (quadratic below ``delta``, linear above)."""
    targets = _match_shape(predictions, jnp.asarray(targets, predictions.dtype))
    return _per_example(optax.huber_loss(predictions, targets, delta=delta))


def sparse_categorical_crossentropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ``logits`` (..., C) against integer ``labels`` (...) or (..., 1)."""
    labels = jnp.asarray(labels)
    if labels.ndim == logits.ndim:
        labels = labels[..., 0]
    return _per_example(
        optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
    )


def categorical_crossentropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ``logits`` against probability (one-hot) ``targets``, same shape."""
    return _per_example(optax.softmax_cross_entropy(logits, jnp.asarray(targets, logits.dtype)))


def binary_crossentropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Sigmoid cross-entropy from logits, against 0/1 (or probability) ``targets``."""
    targets = _match_shape(logits, jnp.asarray(targets, logits.dtype))
    return _per_example(optax.sigmoid_binary_cross_entropy(logits, targets))


LOSSES: dict[str, LossFn] = {
    "mse": mean_squared_error,
    "mean_squared_error": mean_squared_error,
    "mae": mean_absolute_error,
    "mean_absolute_error": mean_absolute_error,
    "huber": huber,
    "cross_entropy": sparse_categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
}

_DESCRIPTIONS = {
    "sparse_categorical_crossentropy": "softmax cross-entropy with integer labels",
    "binary_crossentropy": "sigmoid binary cross-entropy (from logits)",
    "mse": "mean squared error",
}


def get_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """Resolve ``loss`` (a built-in name or a callable) to ``(name, fn)``.

    Args:
      loss: one of ``LOSSES`` or a callable ``loss(predictions, targets)``.
    """
    if isinstance(loss, str):
        key = loss.lower()
        if key not in LOSSES:
            raise ValueError(
                f"Trainer(loss={loss!r}): unknown loss name; expected one of "
                f"{sorted(LOSSES)} or a callable loss(predictions, targets)."
            )
        return _canonical(key), LOSSES[key]
    if callable(loss):
        return getattr(loss, "__name__", type(loss).__name__), loss
    raise TypeError(
        f"Trainer(loss=...) expects None, a loss name or a callable loss(predictions, targets); "
        f"got {type(loss).__name__}."
    )


def _canonical(name: str) -> str:
    return {
        "mean_squared_error": "mse",
        "mean_absolute_error": "mae",
        "cross_entropy": "sparse_categorical_crossentropy",
    }.get(name, name)


def _desc(x: Any) -> str:
    return f"{tuple(x.shape)} {np.dtype(x.dtype).name}"


def _is_int(dtype: Any) -> bool:
    return np.issubdtype(np.dtype(dtype), np.integer) or np.dtype(dtype) == np.bool_


def _is_float(dtype: Any) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


def _is_column(shape: tuple[int, ...]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def _binary_values(targets: Any) -> bool:
    values = np.unique(np.asarray(jax.device_get(targets)))
    return bool(np.all((values == 0) | (values == 1)))


def infer_loss(predictions: Any, targets: Any) -> str:
    """Choose a built-in loss from the first batch's predictions (shapes) and targets (arrays).

    | predictions | targets | loss |
    |---|---|---|
    | (N, C), C > 1 | integer (N,) or (N, 1) | sparse_categorical_crossentropy |
    | (N,) or (N, 1) | integer or bool with values 0/1 | binary_crossentropy |
    | any | float, same shape | mse |

    Anything else raises, naming both shapes.
    """
    hint = (
        "Pass loss=... to the Trainer (a name such as 'mse', "
        "'sparse_categorical_crossentropy', 'binary_crossentropy', or a callable "
        "loss(predictions, targets))."
    )
    if not (hasattr(predictions, "shape") and hasattr(targets, "shape")):
        raise ValueError(
            f"Trainer cannot infer a loss for predictions of type {type(predictions).__name__} "
            f"and targets of type {type(targets).__name__}: the table covers single arrays. {hint}"
        )
    p, t = tuple(predictions.shape), tuple(targets.shape)
    if _is_int(targets.dtype):
        if len(p) == 2 and p[1] > 1 and _is_column(t) and t[0] == p[0]:
            return "sparse_categorical_crossentropy"
        if _is_column(p) and _is_column(t) and t[0] == p[0]:
            if _binary_values(targets):
                return "binary_crossentropy"
            raise ValueError(
                f"Trainer cannot infer a loss: predictions {_desc(predictions)} have one column "
                f"but the integer targets {_desc(targets)} are not all 0 or 1. {hint}"
            )
    elif _is_float(targets.dtype) and (p == t or (_is_column(p) and _is_column(t) and p[0] == t[0])):
        return "mse"
    raise ValueError(
        f"Trainer cannot infer a loss for predictions {_desc(predictions)} and targets "
        f"{_desc(targets)}. {hint}"
    )


def describe(name: str) -> str:
    """A short human description of a built-in loss name."""
    return _DESCRIPTIONS.get(name, name)


def check_targets(name: str, predictions: Any, targets: Any) -> None:
    """Raise if a built-in loss ``name`` cannot take these predictions and targets.

    Args:
      name: the canonical built-in loss name.
      predictions: an array or ``ShapeDtypeStruct`` of the model's output for one batch.
      targets: the batch's targets (array or ``ShapeDtypeStruct``).
    """
    if not (hasattr(predictions, "shape") and hasattr(targets, "shape")):
        raise ValueError(
            f"loss {name!r} takes one array of predictions and one of targets; got "
            f"{type(predictions).__name__} and {type(targets).__name__}."
        )
    p, t = tuple(predictions.shape), tuple(targets.shape)
    if name == "sparse_categorical_crossentropy":
        if not _is_int(targets.dtype):
            raise TypeError(
                f"loss {name!r} expects integer class labels as targets, got {_desc(targets)}; "
                "for one-hot or probability targets use loss='categorical_crossentropy'."
            )
        if not (t == p[:-1] or t == (*p[:-1], 1)) or len(p) < 2:
            raise ValueError(
                f"loss {name!r}: predictions {p} need shape (..., num_classes) and integer "
                f"targets the same leading shape, (...) or (..., 1); got targets {t}."
            )
        return
    if name == "categorical_crossentropy":
        if not _is_float(targets.dtype):
            raise TypeError(
                f"loss {name!r} expects float one-hot or probability targets, got "
                f"{_desc(targets)}; for integer labels use 'sparse_categorical_crossentropy'."
            )
        if p != t:
            raise ValueError(f"loss {name!r}: predictions {p} and targets {t} must have the same shape.")
        return
    if name in ("mse", "mae", "huber", "binary_crossentropy"):
        if not (_is_float(targets.dtype) or _is_int(targets.dtype)):
            raise TypeError(f"loss {name!r} expects numeric targets, got {_desc(targets)}.")
        same = p == t or (_is_column(p) and _is_column(t) and p[0] == t[0])
        if not same:
            raise ValueError(
                f"loss {name!r}: the model's output shape {p} cannot match the target shape "
                f"{t}. Change the model's last layer or pass another loss=."
            )
