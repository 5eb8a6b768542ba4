"""Running metrics kept on the device: weighted running means, accumulated counts, nnx metrics.

Three kinds of running state, each reset at the start of an epoch (``init_state``):

- ``means``: one float32 ``(k, 2)`` array of ``(total, weight)`` rows for the loss, the aux
  scalars and the per-example metrics ("accuracy", "binary_accuracy", "categorical_accuracy",
  "top_k_accuracy", "mae", "mse", and any function ``fn(predictions, targets)`` returning one
  value per example, named after the function; see ``metric_functions.py``).
- ``counts``: one float32 vector of weighted counts for the metrics that are not means of
  per-example values (``CountMetric``: "precision", "recall", "f1", "auc", "pr_auc"; see
  ``count_metrics.py``); present only when such a metric is asked for. Metrics that need the
  same counts share them.
- ``objects``: each ``nnx.metrics`` object's State leaves, updated with
  ``update(logits=, labels=, loss=, mask=)``.

Every row is weighted by the sample weights (padded rows weigh 0).

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
from trainer import losses as losslib
from trainer.count_metrics import (
    COUNTED,
    CountMetric,
    confusion_result,
    count_key,
    count_layout,
    count_size,
    counts_of_batch,
    curve_area,
)
from trainer.metric_functions import CANONICAL, NAMED, trailing_mean


@dataclasses.dataclass(frozen=True, eq=False)
class MetricSpec:
    """One metric: a per-example function, a ``CountMetric``, or an nnx metric object (split once).

    Identity-hashed: the specs are resolved once per Trainer and are part of the compiled
    steps' cache key through ``StepContext``. ``bound`` holds what the first batch settles
    (``bind_classes``): the number of classes of a ``CountMetric`` left to the predictions."""

    name: str
    fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    graphdef: Any = None
    initial: Any = None  # the object's State leaves after reset(), for a fresh epoch
    counted: CountMetric | None = None
    bound: dict[str, int] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def classes(self) -> int:
        """A counted metric's number of classes (1: binary)."""
        assert self.counted is not None
        return self.counted.num_classes or self.bound.get("classes", 1)


def resolve_metrics(metrics: Any) -> tuple[MetricSpec, ...]:
    """Turn the Trainer's ``metrics=`` argument into MetricSpecs.

    Args:
      metrics: None, a name, a ``CountMetric``, a function ``fn(predictions, targets)`` of
        one value per example (named after the function; one whose parameters are named
        ``y_true`` and ``y_pred`` is called by name), an nnx metric object, or a sequence or
        dict (name: metric) of them.
    """
    if metrics is None:
        return ()
    if isinstance(metrics, dict):
        items = list(metrics.items())
    else:
        single = isinstance(metrics, str | CountMetric) or hasattr(metrics, "update") or callable(metrics)
        seq: Sequence[Any] = [metrics] if single else metrics
        items = [(None, m) for m in seq]
    specs = [_spec(name, m) for name, m in items]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"Trainer(metrics=...): metric names must be unique, got {names}.")
    return tuple(specs)


def _spec(name: str | None, m: Any) -> MetricSpec:
    if isinstance(m, str):
        key = m.lower()
        if key in COUNTED:
            return MetricSpec(name or COUNTED[key].name, counted=COUNTED[key])
        if key not in NAMED:
            known = sorted((set(NAMED) - set(CANONICAL)) | set(COUNTED))
            raise ValueError(
                f"Trainer(metrics=...): unknown metric {m!r}; expected one of {known}, a "
                "CountMetric, a function fn(predictions, targets) or an nnx.metrics object."
            )
        return MetricSpec(name or CANONICAL.get(key, key), fn=NAMED[key])
    if isinstance(m, CountMetric):
        return MetricSpec(name or m.name, counted=m)
    if hasattr(m, "update") and hasattr(m, "compute") and hasattr(m, "reset"):
        m.reset()
        graphdef, flat = nnx.flatten(m)
        leaves = [v.value if isinstance(v, nnx.Variable) else v for v in flat]
        return MetricSpec(name or _snake(type(m).__name__), graphdef=graphdef, initial=leaves)
    if callable(m):
        fn_name = name or getattr(m, "__name__", None)
        if not fn_name or fn_name == "<lambda>":
            raise ValueError(
                "Trainer(metrics=...): a lambda has no name to log it under; pass "
                "metrics={'name': fn} or a def'd function."
            )
        return MetricSpec(fn_name, fn=losslib.in_our_order(m))
    raise TypeError(
        f"Trainer(metrics=...): expected metric names, CountMetrics, functions "
        f"fn(predictions, targets) or nnx.metrics objects, got {type(m).__name__}."
    )


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out


def bind_classes(specs: tuple[MetricSpec, ...], predictions: Any) -> None:
    """Settle the number of classes of the counted metrics left to the predictions: the size
    of their last axis when it is more than 1, otherwise 1 (binary).

    Args:
      specs: the resolved metrics.
      predictions: the first batch's predictions (an array or ``ShapeDtypeStruct``).
    """
    shape = tuple(getattr(predictions, "shape", ()))
    classes = shape[-1] if len(shape) >= 2 and shape[-1] > 1 else 1
    for spec in specs:
        if spec.counted is not None and spec.counted.num_classes is None:
            spec.bound["classes"] = classes


def mean_rows(specs: tuple[MetricSpec, ...], aux_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The names of the running-mean rows: ``loss``, the aux scalars, the per-example metrics."""
    return ("loss", *aux_keys, *(s.name for s in specs if s.fn is not None))


def init_state(specs: tuple[MetricSpec, ...], aux_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Zeroed running state (host numpy; the Trainer copies it to the device).

    ``means`` is one float32 ``(k, 2)`` array of ``(total, weight)`` rows in ``mean_rows``
    order; ``counts`` (only with counted metrics) one float32 vector laid out by
    ``count_layout``; ``objects`` holds each nnx metric object's State leaves.
    """
    rows = mean_rows(specs, aux_keys)
    objects = {s.name: list(s.initial) for s in specs if s.graphdef is not None}
    state = {"means": np.zeros((len(rows), 2), np.float32), "objects": objects}
    layout = count_layout(specs)
    if layout:
        state["counts"] = np.zeros(sum(count_size(k) for k in layout), np.float32)
    return state


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
    layout = count_layout(specs)
    blocks: dict[tuple[Any, ...], jax.Array] = {}
    for spec in specs:
        if predictions is None or targets is None:
            raise ValueError(
                f"metric {spec.name!r} needs predictions and targets: a compute_loss override "
                "must return them as aux['predictions'] and the batch must hold targets."
            )
        if spec.fn is not None:
            values = _per_example_values(spec, predictions, targets)
            w = jnp.ones_like(values) if weights is None else weights.astype(jnp.float32)
            rows.append((jnp.sum(values * w), jnp.sum(w)))
        elif spec.counted is not None:
            key = count_key(spec)
            if key not in blocks:
                blocks[key] = counts_of_batch(key, spec, predictions, targets, weights)
        else:
            metric = nnx.unflatten(spec.graphdef, list(objects[spec.name]))  # fresh Variables
            kwargs = {"logits": predictions, "labels": targets, "predictions": predictions}
            kwargs["loss"] = loss if per_example_loss is None else per_example_loss
            kwargs["values"] = kwargs["loss"]
            metric.update(mask=weights, **kwargs)
            _, leaves = nnx.flatten(metric)
            objects[spec.name] = [v.value if isinstance(v, nnx.Variable) else v for v in leaves]
    added = jnp.stack([jnp.stack([t.astype(jnp.float32), w.astype(jnp.float32)]) for t, w in rows])
    out = {"means": state["means"] + added, "objects": objects}
    if layout:
        out["counts"] = state["counts"] + jnp.concatenate([blocks[k] for k in layout])
    return out


def _per_example_values(spec: MetricSpec, predictions: Any, targets: Any) -> jax.Array:
    values = jnp.asarray(spec.fn(predictions, targets))
    rows = jax.tree.leaves(predictions)[0].shape[0]
    if values.ndim == 0 or values.shape[0] != rows:
        raise ValueError(
            f"metric {spec.name!r} returned shape {values.shape}; a metric function "
            f"fn(predictions, targets) returns one value per example, shape ({rows},) (extra "
            "axes are averaged), so that sample weights and padded rows apply."
        )
    return trailing_mean(values)


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
    layout = count_layout(specs)
    for spec in specs:
        if spec.counted is not None:
            key = count_key(spec)
            block = state["counts"][layout[key] : layout[key] + count_size(key)]
            if spec.counted.kind == "auc":
                out[spec.name] = curve_area(spec.counted.curve, block, spec.classes, key[2])
            else:
                out[spec.name] = confusion_result(spec.counted.kind, block, spec.classes)
            continue
        if spec.graphdef is None:
            continue
        computed = nnx.unflatten(spec.graphdef, list(state["objects"][spec.name])).compute()
        if isinstance(computed, dict):
            out.update({f"{spec.name}_{k}" if k != spec.name else k: v for k, v in computed.items()})
        else:
            out[spec.name] = computed
    return out
