"""Running metrics kept on the device: per-example metric functions and weighted running means.

The running means (loss, aux scalars, named metrics) are the ``(total, weight)`` rows of one
float32 ``(k, 2)`` array. Named metrics ("accuracy", "top_k_accuracy", "mae", "mse") compute one
value per example, weighted by the sample weights (padded rows weigh 0). ``nnx.metrics`` objects
are carried as their State and updated with ``update(logits=, labels=, loss=, mask=)``.

Why not ``nnx.metrics.Average`` for the built-in ones: each of its Variables is a buffer that a
compiled step takes and returns, and on a small model every buffer costs dispatch time per step
(two per metric, against one array for all of them here). Metric objects given by the user are
still nnx metrics, run as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import nnx


def _trailing_mean(values: jax.Array) -> jax.Array:
    values = values.astype(jnp.float32)
    return values if values.ndim <= 1 else values.reshape(values.shape[0], -1).mean(axis=1)


def accuracy(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example accuracy: argmax for class scores, ``logit > 0`` for one binary column."""
    targets = jnp.asarray(targets)
    if predictions.ndim == 1 or predictions.shape[-1] == 1:
        targets = targets.reshape(predictions.shape)
        return _trailing_mean((predictions > 0) == (targets > 0.5))
    if predictions.ndim == targets.ndim + 1:
        return _trailing_mean(jnp.argmax(predictions, axis=-1) == targets)
    if targets.shape[-1] == 1:
        return _trailing_mean(jnp.argmax(predictions, axis=-1) == targets[..., 0])
    return _trailing_mean(jnp.argmax(predictions, -1) == jnp.argmax(targets, -1))


def top_k_accuracy(predictions: jax.Array, targets: jax.Array, k: int = 5) -> jax.Array:
    """Per-example: whether the integer label is among the ``k`` highest scores."""
    targets = jnp.asarray(targets)
    if targets.ndim == predictions.ndim:
        targets = targets[..., 0]
    _, top = jax.lax.top_k(predictions, min(k, predictions.shape[-1]))
    return _trailing_mean(jnp.any(top == targets[..., None], axis=-1))


def mae(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean absolute error."""
    targets = jnp.asarray(targets, predictions.dtype).reshape(predictions.shape)
    return _trailing_mean(jnp.abs(predictions - targets))


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean squared error."""
    targets = jnp.asarray(targets, predictions.dtype).reshape(predictions.shape)
    return _trailing_mean(jnp.square(predictions - targets))


NAMED: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "accuracy": accuracy,
    "acc": accuracy,
    "top_k_accuracy": top_k_accuracy,
    "mae": mae,
    "mean_absolute_error": mae,
    "mse": mse,
    "mean_squared_error": mse,
}
_CANONICAL = {"acc": "accuracy", "mean_absolute_error": "mae", "mean_squared_error": "mse"}


@dataclasses.dataclass(frozen=True, eq=False)
class MetricSpec:
    """One metric: a named per-example function, or an nnx metric object (split once).

    Identity-hashed: the specs are resolved once per Trainer and are part of the compiled
    steps' cache key through ``StepContext``."""

    name: str
    fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    graphdef: Any = None
    initial: Any = None  # the object's State leaves after reset(), for a fresh epoch


def resolve_metrics(metrics: Any) -> tuple[MetricSpec, ...]:
    """Turn the Trainer's ``metrics=`` argument into MetricSpecs.

    Args:
      metrics: None, a name, an nnx metric object, or a sequence or dict of them.
    """
    if metrics is None:
        return ()
    if isinstance(metrics, dict):
        items = list(metrics.items())
    else:
        seq: Sequence[Any] = [metrics] if isinstance(metrics, str) or hasattr(metrics, "update") else metrics
        items = [(None, m) for m in seq]
    specs = []
    for name, m in items:
        if isinstance(m, str):
            key = m.lower()
            if key not in NAMED:
                raise ValueError(
                    f"Trainer(metrics=...): unknown metric {m!r}; expected one of "
                    f"{sorted(set(NAMED) - set(_CANONICAL))} or an nnx.metrics object."
                )
            specs.append(MetricSpec(name or _CANONICAL.get(key, key), fn=NAMED[key]))
        elif hasattr(m, "update") and hasattr(m, "compute") and hasattr(m, "reset"):
            m.reset()
            graphdef, flat = nnx.flatten(m)
            leaves = [v.value if isinstance(v, nnx.Variable) else v for v in flat]
            specs.append(
                MetricSpec(name or _snake(type(m).__name__), graphdef=graphdef, initial=leaves)
            )
        else:
            raise TypeError(
                f"Trainer(metrics=...): expected metric names or nnx.metrics objects, got "
                f"{type(m).__name__}."
            )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Trainer(metrics=...): metric names must be unique, got {names}.")
    return tuple(specs)


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out


def mean_rows(specs: tuple[MetricSpec, ...], aux_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The names of the running-mean rows: ``loss``, the aux scalars, the named metrics."""
    return ("loss", *aux_keys, *(s.name for s in specs if s.graphdef is None))


def init_state(specs: tuple[MetricSpec, ...], aux_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Zeroed running state (``means`` on the host; the Trainer copies it to the device).

    ``means`` is one float32 ``(k, 2)`` array of ``(total, weight)`` rows in ``mean_rows``
    order; ``objects`` holds each nnx metric object's State leaves.
    """
    rows = mean_rows(specs, aux_keys)
    objects = {s.name: list(s.initial) for s in specs if s.graphdef is not None}
    return {"means": np.zeros((len(rows), 2), np.float32), "objects": objects}


def update_state(
    specs: tuple[MetricSpec, ...],
    state: dict[str, Any],
    *,
    aux_keys: tuple[str, ...] = (),
    loss: jax.Array,
    weight_total: jax.Array,
    aux: dict[str, Any],
    predictions: Any,
    targets: Any,
    weights: jax.Array | None,
    per_example_loss: jax.Array | None,
) -> dict[str, Any]:
    """Add one batch to the running state (pure)."""
    weight_total = weight_total.astype(jnp.float32)
    rows = [(loss * weight_total, weight_total)]
    zero = jnp.zeros((), jnp.float32)
    for key in aux_keys:  # a key missing from this mode's aux adds nothing
        rows.append((jnp.asarray(aux[key]) * weight_total, weight_total) if key in aux else (zero, zero))
    objects = dict(state["objects"])
    for spec in specs:
        if predictions is None or targets is None:
            raise ValueError(
                f"metric {spec.name!r} needs predictions and targets: a compute_loss override "
                "must return them as aux['predictions'] and the batch must hold targets."
            )
        if spec.graphdef is None:
            values = spec.fn(predictions, targets)
            w = jnp.ones_like(values) if weights is None else weights.astype(jnp.float32)
            rows.append((jnp.sum(values * w), jnp.sum(w)))
        else:
            metric = nnx.unflatten(spec.graphdef, list(objects[spec.name]))  # fresh Variables
            kwargs = {"logits": predictions, "labels": targets, "predictions": predictions}
            kwargs["loss"] = loss if per_example_loss is None else per_example_loss
            kwargs["values"] = kwargs["loss"]
            metric.update(mask=weights, **kwargs)
            _, leaves = nnx.flatten(metric)
            objects[spec.name] = [v.value if isinstance(v, nnx.Variable) else v for v in leaves]
    added = jnp.stack([jnp.stack([t.astype(jnp.float32), w.astype(jnp.float32)]) for t, w in rows])
    return {"means": state["means"] + added, "objects": objects}


def results(
    specs: tuple[MetricSpec, ...], state: dict[str, Any], aux_keys: tuple[str, ...] = ()
) -> dict[str, jax.Array]:
    """The running values (pure): weighted means, 0 where nothing was weighed yet."""
    out: dict[str, Any] = {}
    means = state["means"]
    weights = means[:, 1]
    values = means[:, 0] / jnp.where(weights == 0, 1.0, weights)
    for i, name in enumerate(mean_rows(specs, aux_keys)):
        out[name] = values[i]
    for spec in specs:
        if spec.graphdef is None:
            continue
        computed = nnx.unflatten(spec.graphdef, list(state["objects"][spec.name])).compute()
        if isinstance(computed, dict):
            out.update({f"{spec.name}_{k}" if k != spec.name else k: v for k, v in computed.items()})
        else:
            out[spec.name] = computed
    return out
