"""Built-in per-example losses (on optax), the loss-inference table, and target checks.

Every built-in loss maps ``(predictions, targets)`` (optax's order; Keras uses the reverse) to one
value per example, shape ``(N,)``, so the Trainer can weight and mask it. Extra axes after the
batch axis (a sequence, say) are averaged.

A callable loss in Keras's order, ``loss(y_true, y_pred)``, is wrapped with ``keras_order``, or
recognised by its parameter names (``y_true`` and ``y_pred``, in either position) and called by
name (see ``in_our_order``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[Any, Any], jax.Array]


def _optax() -> Any:
    """optax, imported when a loss is first traced (importing it takes a tenth of a second)."""
    import optax

    return optax


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
    return _per_example(_optax().squared_error(predictions, targets))


def mean_absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean of ``|predictions - targets|``."""
    targets = _match_shape(predictions, jnp.asarray(targets, predictions.dtype))
    return _per_example(jnp.abs(predictions - targets))


def huber(predictions: jax.Array, targets: jax.Array, delta: float = 1.0) -> jax.Array:
    """Per-example mean of optax's Huber loss (quadratic below ``delta``, linear above)."""
    targets = _match_shape(predictions, jnp.asarray(targets, predictions.dtype))
    return _per_example(_optax().huber_loss(predictions, targets, delta=delta))


def sparse_categorical_crossentropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ``logits`` (..., C) against integer ``labels`` (...) or (..., 1)."""
    labels = jnp.asarray(labels)
    if labels.ndim == logits.ndim:
        labels = labels[..., 0]
    return _per_example(
        _optax().softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
    )


def categorical_crossentropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ``logits`` against probability (one-hot) ``targets``, same shape."""
    return _per_example(_optax().softmax_cross_entropy(logits, jnp.asarray(targets, logits.dtype)))


def binary_crossentropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Sigmoid cross-entropy from logits, against 0/1 (or probability) ``targets``."""
    targets = _match_shape(logits, jnp.asarray(targets, logits.dtype))
    return _per_example(_optax().sigmoid_binary_cross_entropy(logits, targets))


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
    "categorical_crossentropy": "softmax cross-entropy with one-hot targets",
    "binary_crossentropy": "sigmoid binary cross-entropy (from logits)",
    "mse": "mean squared error",
}


class KerasOrder:
    """A loss or metric ``fn(y_true, y_pred)`` called as ``(predictions, targets)``.

    Args:
      fn: the Keras-order callable.
      by_name: call ``fn(y_true=targets, y_pred=predictions)`` (its parameters have those
        names) instead of ``fn(targets, predictions)``.
      announced: whether ``note`` (how it is called) needs no saying: True when the user
        wrapped it; the Trainer says it once otherwise and sets it.
    """

    def __init__(self, fn: Callable[..., Any], by_name: bool = False, announced: bool = False):
        self.fn, self.by_name, self.announced = fn, by_name, announced
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.note = (
            f"{self.__name__!r} names its parameters y_true and y_pred (Keras): called as "
            f"{self.__name__}(y_true=targets, y_pred=predictions)"
            if by_name
            else f"{self.__name__!r} is in Keras's order: called as {self.__name__}(targets, predictions)"
        )

    def __call__(self, predictions: Any, targets: Any) -> Any:
        if self.by_name:
            return self.fn(y_true=targets, y_pred=predictions)
        return self.fn(targets, predictions)

    def __repr__(self) -> str:
        return f"keras_order({self.fn!r})"


def keras_order(fn: Callable[[Any, Any], Any]) -> KerasOrder:
    """Wrap a Keras-order ``fn(y_true, y_pred)`` as ``fn(predictions, targets)`` (optax's order).

    Args:
      fn: a loss or metric taking the targets first.

    >>> import jax.numpy as jnp
    >>> loss = keras_order(lambda y_true, y_pred: (y_pred - y_true) ** 2)
    >>> float(loss(jnp.array(3.0), jnp.array(1.0)))
    4.0
    """
    if isinstance(fn, KerasOrder):
        return fn
    return KerasOrder(fn, announced=True)


def in_our_order(fn: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """``fn`` as ``fn(predictions, targets)``: a callable whose parameters are named
    ``y_true`` and ``y_pred`` (in either position) is wrapped to pass them by name.

    Args:
      fn: a loss or metric callable.
    """
    if isinstance(fn, KerasOrder):
        return fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    if "y_true" not in params or "y_pred" not in params:
        return fn
    kinds = (params["y_true"].kind, params["y_pred"].kind)
    if inspect.Parameter.POSITIONAL_ONLY in kinds:  # cannot pass by name: by position
        names = list(params)
        return KerasOrder(fn) if names.index("y_true") < names.index("y_pred") else fn
    return KerasOrder(fn, by_name=True)


def get_loss(loss: str | LossFn) -> tuple[str, LossFn]:
    """Resolve ``loss`` (a built-in name or a callable) to ``(name, fn)``.

    Args:
      loss: one of ``LOSSES`` or a callable ``loss(predictions, targets)``; a callable whose
        parameters are named ``y_true`` and ``y_pred`` is called by name (``in_our_order``).
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
        return getattr(loss, "__name__", type(loss).__name__), in_our_order(loss)
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


def _host_values(targets: Any) -> np.ndarray:
    return np.asarray(jax.device_get(targets))


def _binary_values(targets: Any) -> bool:
    values = np.unique(_host_values(targets))
    return bool(np.all((values == 0) | (values == 1)))


def _zeros_and_ones(targets: Any) -> bool:
    """Values 0 and 1, both present (a float column of zeros alone reads as regression)."""
    values = np.unique(_host_values(targets))
    return values.size == 2 and bool(np.all(values == [0, 1]))


def _one_hot_rows(targets: Any) -> bool:
    values = _host_values(targets)
    return _binary_values(values) and bool(np.all(values.sum(axis=-1) == 1))


def infer_loss(predictions: Any, targets: Any) -> str:
    """Choose a built-in loss from the first batch's predictions (shapes) and targets (arrays).

    | predictions | targets | loss |
    |---|---|---|
    | (N, C) or (N, T, C), C > 1 | integer (N[, T]) or (N[, T], 1) | sparse_categorical_crossentropy |
    | (N, C) or (N, T, C), C > 1 | float one-hot, same shape | categorical_crossentropy |
    | (N,) or (N, 1) | integer or bool, values 0/1 | binary_crossentropy |
    | (N,) or (N, 1) | float, values 0 and 1 (both present) | binary_crossentropy |
    | any | float, same shape | mse |

    A (N, T, C) sequence is a per-token cross-entropy, averaged over the tokens of each example
    (one value per example). Anything else raises, naming both shapes.
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
    classes = len(p) >= 2 and p[-1] > 1
    column = _is_column(p) and _is_column(t) and t[0] == p[0]
    if _is_int(targets.dtype):
        if classes and t in (p[:-1], (*p[:-1], 1)):
            return "sparse_categorical_crossentropy"
        if column:
            if _binary_values(targets):
                return "binary_crossentropy"
            raise ValueError(
                f"Trainer cannot infer a loss: predictions {_desc(predictions)} have one column "
                f"but the integer targets {_desc(targets)} are not all 0 or 1. {hint}"
            )
    elif _is_float(targets.dtype):
        if classes and p == t and _one_hot_rows(targets):
            return "categorical_crossentropy"
        if column and _zeros_and_ones(targets):
            return "binary_crossentropy"
        if p == t or column:
            return "mse"
    raise ValueError(
        f"Trainer cannot infer a loss for predictions {_desc(predictions)} and targets "
        f"{_desc(targets)}. {hint}"
    )


def describe(name: str, predictions: Any = None) -> str:
    """A short human description of a built-in loss name (per token when ``predictions`` are
    a sequence of class scores, (N, T, C))."""
    text = _DESCRIPTIONS.get(name, name)
    if name.endswith("categorical_crossentropy") and len(getattr(predictions, "shape", ())) > 2:
        text += ", per token, averaged over the tokens of each example"
    return text


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
