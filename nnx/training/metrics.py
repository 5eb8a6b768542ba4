"""Metrics that accumulate over batches in ``MetricState`` Variables, so they work inside jit.

Every metric's ``update`` takes keyword arguments, ignores the ones it does not use, and accepts
an optional ``mask``: per-example weights over the leading axes of the values (0 drops a row).
``MultiMetric.update(mask=...)`` takes one mask for all metrics or a dict of masks by metric name.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nnx.graph import split
from nnx.object import Object
from nnx.variablelib import Variable


class MetricState(Variable):
    """The accumulated state of a Metric (totals, counts, running moments)."""


class Statistics(NamedTuple):
    """Summary statistics computed by ``Welford``."""

    mean: jax.Array
    standard_error_of_mean: jax.Array
    standard_deviation: jax.Array


class Metric(Object):
    """Base class of metrics: ``reset()``, ``update(**kwargs)``, ``compute()``.

    Subclasses keep all state in ``MetricState`` Variables and change only their values, so a
    metric can be updated inside ``nnx.jit`` and its state moves with the model's State.
    """

    def reset(self) -> None:
        """Return the metric to its initial (empty) state."""
        raise NotImplementedError(f"{type(self).__name__} must implement reset()")

    def update(self, **kwargs: Any) -> None:
        """Accumulate one batch; unused keyword arguments are ignored."""
        raise NotImplementedError(f"{type(self).__name__} must implement update(**kwargs)")

    def compute(self) -> Any:
        """The metric's value over everything accumulated since the last reset."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def split(self, *filters: Any) -> tuple[Any, ...]:
        """``nnx.split(self, *filters)``: the metric's GraphDef and State(s)."""
        return split(self, *filters)


def _argument(metric: Metric, kwargs: dict[str, Any], name: str) -> jax.Array:
    if name not in kwargs:
        raise TypeError(
            f"{type(metric).__name__}.update expects the keyword argument {name!r}; "
            f"got {sorted(kwargs) or 'none'}."
        )
    value = kwargs[name]
    if isinstance(value, Variable):
        value = value.value
    return jnp.asarray(value)


def _weights(metric: Metric, values: jax.Array, mask: Any) -> jax.Array:
    """Per-element weights with the shape of ``values`` from a per-example ``mask``."""
    if mask is None:
        return jnp.ones(values.shape, jnp.float32)
    mask = jnp.asarray(mask)
    if mask.ndim > values.ndim or values.shape[: mask.ndim] != mask.shape:
        raise ValueError(
            f"{type(metric).__name__}.update: mask shape {mask.shape} must match the leading "
            f"axes of the values, whose shape is {values.shape}."
        )
    mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    return jnp.broadcast_to(mask, values.shape).astype(jnp.float32)


class Average(Metric):
    """The (weighted) mean of the values passed as ``argname`` over all updates.

    Args:
      argname: the keyword argument of ``update`` that holds the values.

    Example::

      >>> avg = Average('loss')
      >>> avg.update(loss=jnp.array([1.0, 3.0]), logits=None)
      >>> float(avg.compute())
      2.0
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.total = MetricState(jnp.array(0.0, jnp.float32))
        self.count = MetricState(jnp.array(0.0, jnp.float32))

    def reset(self) -> None:
        """Zero the running total and count."""
        self.total.value = jnp.zeros_like(self.total.value)
        self.count.value = jnp.zeros_like(self.count.value)

    def update(self, *, mask: Any = None, **kwargs: Any) -> None:
        """Add the values in ``kwargs[argname]``, weighted by ``mask`` when given."""
        if mask is not None and isinstance(kwargs.get(self.argname), int | float):
            raise ValueError(
                f"{type(self).__name__}.update: with a mask, {self.argname!r} should be a jax array "
                f"with one entry per mask entry, got the Python number {kwargs[self.argname]!r}."
            )
        values = _argument(self, kwargs, self.argname).astype(jnp.float32)
        self._accumulate(values, mask)

    def _accumulate(self, values: jax.Array, mask: Any) -> None:
        weights = _weights(self, values, mask)
        self.total.value = self.total.value + jnp.sum(values * weights)
        self.count.value = self.count.value + jnp.sum(weights)

    def compute(self) -> jax.Array:
        """The weighted mean (NaN before any update)."""
        return self.total.value / self.count.value


class Accuracy(Average):
    """The fraction of correct predictions.

    Multi-class logits (one more axis than ``labels``) are compared by ``argmax``; with
    ``threshold`` set, a prediction is positive when ``logits >= threshold`` and is compared with
    ``labels > 0``.

    Args:
      threshold: the decision threshold for binary classification (None: multi-class argmax).
    """

    def __init__(self, threshold: float | None = None):
        super().__init__("values")
        self.threshold = threshold

    def update(self, *, mask: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Accumulate correctness of ``logits`` against ``labels`` (optionally masked)."""
        logits = _argument(self, kwargs, "logits")
        labels = _argument(self, kwargs, "labels")
        if self.threshold is None:
            if logits.ndim != labels.ndim + 1:
                raise ValueError(
                    "For multi-class classification, Accuracy needs logits with one more axis "
                    f"than labels; got logits of shape {logits.shape} and labels of shape "
                    f"{labels.shape}. For binary predictions pass Accuracy(threshold=...)."
                )
            predictions = jnp.argmax(logits, axis=-1)
        else:
            if logits.shape != labels.shape:
                raise ValueError(
                    f"For binary classification (threshold={self.threshold}), Accuracy needs "
                    f"logits and labels of the same shape; got {logits.shape} and {labels.shape}."
                )
            predictions = logits >= self.threshold
            labels = labels > 0
        correct = (predictions.astype(labels.dtype) == labels).astype(jnp.float32)
        self._accumulate(correct, mask)


class Welford(Metric):
    """Running mean, standard deviation and standard error of the values ``argname``.

    Uses Welford's (Chan's parallel) update, stable over many batches.

    Args:
      argname: the keyword argument of ``update`` that holds the values.
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.count = MetricState(jnp.array(0.0, jnp.float32))
        self.mean = MetricState(jnp.array(0.0, jnp.float32))
        self.m2 = MetricState(jnp.array(0.0, jnp.float32))

    def reset(self) -> None:
        """Forget all values seen so far."""
        for var in (self.count, self.mean, self.m2):
            var.value = jnp.zeros_like(var.value)

    def update(self, *, mask: Any = None, **kwargs: Any) -> None:
        """Merge the values in ``kwargs[argname]`` (weighted by ``mask``) into the moments."""
        values = _argument(self, kwargs, self.argname).astype(jnp.float32)
        weights = _weights(self, values, mask)
        n_b = jnp.sum(weights)
        safe_n_b = jnp.where(n_b > 0, n_b, 1.0)
        mean_b = jnp.sum(values * weights) / safe_n_b
        m2_b = jnp.sum(weights * (values - mean_b) ** 2)
        n_a, mean_a = self.count.value, self.mean.value
        n = n_a + n_b
        safe_n = jnp.where(n > 0, n, 1.0)
        delta = mean_b - mean_a
        self.mean.value = mean_a + delta * n_b / safe_n
        self.m2.value = self.m2.value + m2_b + delta**2 * n_a * n_b / safe_n
        self.count.value = n

    def compute(self) -> Statistics:
        """``Statistics(mean, standard_error_of_mean, standard_deviation)`` (population std)."""
        variance = self.m2.value / self.count.value
        std = jnp.sqrt(variance)
        return Statistics(
            mean=self.mean.value,
            standard_error_of_mean=std / jnp.sqrt(self.count.value),
            standard_deviation=std,
        )


_MULTI_METRIC_RESERVED = frozenset({"reset", "update", "compute", "split", "train", "eval"})


class MultiMetric(Metric):
    """Several named metrics updated together; ``compute()`` returns a dict by name.

    Args:
      **metrics: the metrics, e.g. ``MultiMetric(loss=Average('loss'), accuracy=Accuracy())``.

    ``update(**kwargs)`` passes all keyword arguments to every metric, each using what it needs;
    ``mask`` is either one mask for every metric or a dict ``{metric name: mask}``, and a metric
    receives ``mask=`` only when it has one (so custom metrics need not accept it).
    """

    def __init__(self, **metrics: Metric):
        for name, metric in metrics.items():
            if name in _MULTI_METRIC_RESERVED or name.startswith("_"):
                raise ValueError(
                    f"MultiMetric: {name!r} cannot name a metric (it is a method or private "
                    "name); choose another name."
                )
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"MultiMetric: {name!r} must be a Metric, got {type(metric).__name__}."
                )
            setattr(self, name, metric)
        self._metric_names = tuple(metrics)

    def _metrics(self) -> list[tuple[str, Metric]]:
        return [(name, getattr(self, name)) for name in self._metric_names]

    def reset(self) -> None:
        """Reset every metric."""
        for _, metric in self._metrics():
            metric.reset()

    def update(self, *, mask: Any = None, **kwargs: Any) -> None:
        """Update every metric with the same keyword arguments and its own ``mask``, if any."""
        if isinstance(mask, dict):
            unknown = sorted(set(mask) - set(self._metric_names))
            if unknown:
                raise KeyError(
                    f"MultiMetric.update: mask names unknown metrics {unknown}; the metrics are "
                    f"{list(self._metric_names)}."
                )
        for name, metric in self._metrics():
            own = mask.get(name) if isinstance(mask, dict) else mask
            if own is None:
                metric.update(**kwargs)
            else:
                metric.update(mask=own, **kwargs)

    def compute(self) -> dict[str, Any]:
        """A dict from metric name to that metric's ``compute()``."""
        return {name: metric.compute() for name, metric in self._metrics()}


__all__ = ["Accuracy", "Average", "Metric", "MetricState", "MultiMetric", "Statistics", "Welford"]
