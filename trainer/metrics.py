"""Running metrics kept on the device: weighted running means, accumulated counts, nnx metrics.

Three kinds of running state, each reset at the start of an epoch (``init_state``):

- ``means``: one float32 ``(k, 2)`` array of ``(total, weight)`` rows for the loss, the aux
  scalars and the per-example metrics ("accuracy", "binary_accuracy", "categorical_accuracy",
  "top_k_accuracy", "mae", "mse", and any function ``fn(predictions, targets)`` returning one
  value per example, named after the function).
- ``counts``: one float32 vector of weighted counts for the metrics that are not means of
  per-example values (``CountMetric``: "precision", "recall", "f1", "auc", "pr_auc"); present
  only when such a metric is asked for. Metrics that need the same counts share them.
- ``objects``: each ``nnx.metrics`` object's State leaves, updated with
  ``update(logits=, labels=, loss=, mask=)``.

Every row is weighted by the sample weights (padded rows weigh 0).

Why not ``nnx.metrics.Average`` for the built-in ones: each of its Variables is a buffer that a
compiled step takes and returns, and on a small model every buffer costs dispatch time per step
(two per metric, against one array for all of them here). Metric objects given by the user are
still nnx metrics, run as they are.

Counted metrics take the predictions as logits, as the built-in losses do: one column (or none)
is binary, positive where ``logit > 0`` (``sigmoid(logit)`` is the score the AUC thresholds);
``C > 1`` columns are ``C`` classes, predicted by argmax, with precision, recall and f1
macro-averaged over the classes that occur (in the targets or the predictions, with nonzero
weight) and the AUC one-vs-rest on ``softmax(logits)``, macro-averaged over the classes that have
both positives and negatives. ``CountMetric(..., from_logits=False)`` takes probabilities
(threshold 0.5, scores as given). Targets are 0/1 (binary), integer labels or one-hot rows.
Extra axes (a sequence) count every position with its example's weight.

The AUC is computed from a histogram of the scores over ``num_thresholds`` evenly spaced
thresholds in [0, 1], accumulated over the epoch: the ROC area by the trapezoid rule, the PR area
with precision interpolated between thresholds as the true positives grow linearly with the
predicted positives (Davis and Goadrich, 2006). Scores closer than ``1 / (num_thresholds - 1)``
are not told apart.
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


def _trailing_mean(values: jax.Array) -> jax.Array:
    values = values.astype(jnp.float32)
    return values if values.ndim <= 1 else values.reshape(values.shape[0], -1).mean(axis=1)


def _is_binary(predictions: jax.Array) -> bool:
    return predictions.ndim == 1 or predictions.shape[-1] == 1


def accuracy(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example accuracy: argmax for class scores, ``logit > 0`` for one binary column."""
    if _is_binary(predictions):
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
    return _trailing_mean((predictions > threshold) == (targets > 0.5))


def categorical_accuracy(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example: whether the argmax of the scores is the target class (integer labels, of
    shape (...) or (..., 1), or one-hot rows)."""
    return _trailing_mean(jnp.argmax(predictions, axis=-1) == _labels(predictions, targets))


def _labels(predictions: jax.Array, targets: jax.Array) -> jax.Array:
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
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": categorical_accuracy,
    "top_k_accuracy": top_k_accuracy,
    "mae": mae,
    "mean_absolute_error": mae,
    "mse": mse,
    "mean_squared_error": mse,
}
_CANONICAL = {"acc": "accuracy", "mean_absolute_error": "mae", "mean_squared_error": "mse"}


@dataclasses.dataclass(frozen=True)
class CountMetric:
    """A metric computed from weighted counts accumulated over the epoch.

    Args:
      kind: "precision", "recall", "f1" or "auc".
      curve: for "auc": "ROC" or "PR".
      num_thresholds: for "auc": the number of evenly spaced thresholds in [0, 1].
      num_classes: 1 for one binary output, ``C`` for ``C`` classes; None: from the last axis
        of the predictions on the first batch (one column or none: binary).
      from_logits: the predictions are logits (threshold 0, sigmoid / softmax scores), as the
        built-in losses take them; False: probabilities (threshold 0.5, scores as given).

    >>> CountMetric("auc", curve="PR").name
    'pr_auc'
    """

    kind: str
    curve: str = "ROC"
    num_thresholds: int = 200
    num_classes: int | None = None
    from_logits: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("precision", "recall", "f1", "auc"):
            raise ValueError(
                f"CountMetric(kind={self.kind!r}): expected 'precision', 'recall', 'f1' or 'auc'."
            )
        if self.curve.upper() not in ("ROC", "PR"):
            raise ValueError(f"CountMetric(curve={self.curve!r}): expected 'ROC' or 'PR'.")
        object.__setattr__(self, "curve", self.curve.upper())
        if self.num_thresholds < 3:
            raise ValueError(f"CountMetric(num_thresholds={self.num_thresholds}): need at least 3.")

    @property
    def name(self) -> str:
        """The default log name: the kind, "pr_auc" for the PR curve's area."""
        return "pr_auc" if self.kind == "auc" and self.curve == "PR" else self.kind


COUNTED: dict[str, CountMetric] = {
    "precision": CountMetric("precision"),
    "recall": CountMetric("recall"),
    "f1": CountMetric("f1"),
    "f1_score": CountMetric("f1"),
    "auc": CountMetric("auc"),
    "roc_auc": CountMetric("auc"),
    "pr_auc": CountMetric("auc", curve="PR"),
}


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
            known = sorted((set(NAMED) - set(_CANONICAL)) | set(COUNTED))
            raise ValueError(
                f"Trainer(metrics=...): unknown metric {m!r}; expected one of {known}, a "
                "CountMetric, a function fn(predictions, targets) or an nnx.metrics object."
            )
        return MetricSpec(name or _CANONICAL.get(key, key), fn=NAMED[key])
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


def _count_key(spec: MetricSpec) -> tuple[Any, ...]:
    """What a counted metric accumulates (metrics with the same key share their counts)."""
    c = spec.counted
    if c.kind == "auc":
        return ("histogram", spec.classes, c.num_thresholds, c.from_logits)
    return ("confusion", spec.classes, c.from_logits)


def _count_size(key: tuple[Any, ...]) -> int:
    # confusion: (tp, fp, fn) per class; histogram: (positives, negatives) per class and bucket
    return 3 * key[1] if key[0] == "confusion" else 2 * key[1] * key[2]


def count_layout(specs: tuple[MetricSpec, ...]) -> dict[tuple[Any, ...], int]:
    """The offset of each distinct count block in the ``counts`` vector, in spec order."""
    layout: dict[tuple[Any, ...], int] = {}
    size = 0
    for spec in specs:
        if spec.counted is not None and _count_key(spec) not in layout:
            layout[_count_key(spec)] = size
            size += _count_size(_count_key(spec))
    return layout


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
        state["counts"] = np.zeros(sum(_count_size(k) for k in layout), np.float32)
    return state


def _flat_weights(weights: jax.Array | None, lead: tuple[int, ...]) -> jax.Array:
    """Per-example weights (or ones) broadcast over the extra axes ``lead[1:]``, flattened."""
    if weights is None:
        return jnp.ones(int(np.prod(lead)), jnp.float32)
    w = jnp.asarray(weights, jnp.float32).reshape(lead[0], *([1] * (len(lead) - 1)))
    return jnp.broadcast_to(w, lead).reshape(-1)


def _scores_and_truth(
    spec: MetricSpec, predictions: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[int, ...]]:
    """``(scores, predicted, truth, lead)``: (M, C) float scores in [0, 1], (M, C) 0/1 float
    predicted classes and true classes, for the M positions of the batch (``lead`` their shape)."""
    predictions = jnp.asarray(predictions, jnp.float32)
    classes, from_logits = spec.classes, spec.counted.from_logits
    columns = 1 if _is_binary(predictions) else predictions.shape[-1]
    if columns != classes:
        raise ValueError(
            f"metric {spec.name!r} was set up for {classes} class{'es' if classes > 1 else ''} "
            f"({'one binary column' if classes == 1 else f'{classes} columns'}) but the "
            f"predictions have shape {predictions.shape}; pass "
            f"CountMetric({spec.counted.kind!r}, num_classes={columns}) in metrics=."
        )
    if classes == 1:
        lead = predictions.shape[:-1] if predictions.ndim > 1 else predictions.shape
        x = predictions.reshape(-1, 1)
        truth = (jnp.asarray(targets).reshape(x.shape) > 0.5).astype(jnp.float32)
        scores = jax.nn.sigmoid(x) if from_logits else x
        predicted = (x > (0.0 if from_logits else 0.5)).astype(jnp.float32)
        return scores, predicted, truth, lead
    lead = predictions.shape[:-1]
    x = predictions.reshape(-1, classes)
    labels = _labels(predictions, targets).reshape(-1)
    truth = jax.nn.one_hot(labels, classes, dtype=jnp.float32)
    predicted = jax.nn.one_hot(jnp.argmax(x, axis=-1), classes, dtype=jnp.float32)
    scores = jax.nn.softmax(x, axis=-1) if from_logits else x
    return scores, predicted, truth, lead


def _counts_of_batch(
    key: tuple[Any, ...], spec: MetricSpec, predictions: Any, targets: Any, weights: Any
) -> jax.Array:
    """One batch's contribution to the count block ``key`` (flat)."""
    scores, predicted, truth, lead = _scores_and_truth(spec, predictions, targets)
    w = _flat_weights(weights, lead)[:, None]
    if key[0] == "confusion":
        tp = jnp.sum(w * predicted * truth, axis=0)
        fp = jnp.sum(w * predicted * (1 - truth), axis=0)
        fn = jnp.sum(w * (1 - predicted) * truth, axis=0)
        return jnp.concatenate([tp, fp, fn])
    classes, n = key[1], key[2]
    # bucket k holds the scores above thresholds 0..k (threshold i = i / (n - 1)): the last
    # threshold, above 1, has none
    bucket = jnp.clip(jnp.ceil(scores * (n - 1)).astype(jnp.int32) - 1, 0, n - 2)
    index = bucket + n * jnp.arange(classes)  # (M, C): class-major histogram position
    index = jnp.concatenate([index.reshape(-1), (index + classes * n).reshape(-1)])
    values = jnp.concatenate([(w * truth).reshape(-1), (w * (1 - truth)).reshape(-1)])
    return jnp.zeros(2 * classes * n, jnp.float32).at[index].add(values)


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
            key = _count_key(spec)
            if key not in blocks:
                blocks[key] = _counts_of_batch(key, spec, predictions, targets, weights)
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
    return _trailing_mean(values)


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    return num / jnp.where(den == 0, 1.0, den)


def _confusion_result(kind: str, block: jax.Array, classes: int) -> jax.Array:
    tp, fp, fn = block.reshape(3, classes)
    per_class = {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }[kind]
    occurs = (tp + fp + fn) > 0
    return _ratio(jnp.sum(jnp.where(occurs, per_class, 0.0)), jnp.sum(occurs))


def _curve_area(curve: str, block: jax.Array, classes: int, n: int) -> jax.Array:
    """The area under the ROC or PR curve of each class from its histogram, macro-averaged
    over the classes with both positives and negatives."""
    hist = block.reshape(2, classes, n)
    # true / false positives above each threshold: counts of the buckets at or above it
    tp, fp = jnp.cumsum(hist[:, :, ::-1], axis=-1)[:, :, ::-1]
    pos, neg = tp[:, 0], fp[:, 0]
    if curve == "ROC":
        tpr, fpr = _ratio(tp, pos[:, None]), _ratio(fp, neg[:, None])
        area = jnp.sum((fpr[:, :-1] - fpr[:, 1:]) * (tpr[:, :-1] + tpr[:, 1:]) / 2, axis=-1)
    else:
        # from threshold i + 1 (fewer predicted positives, p_lo) to i (p_hi): tp = a + s * p
        p = tp + fp
        p_lo, p_hi = p[:, 1:], p[:, :-1]
        d_tp = tp[:, :-1] - tp[:, 1:]
        slope = _ratio(d_tp, p_hi - p_lo)
        intercept = tp[:, 1:] - slope * p_lo
        # from p = 0 the precision is the slope (a = 0): no logarithmic part
        log_ratio = jnp.log(jnp.where(p_lo > 0, p_hi / jnp.where(p_lo > 0, p_lo, 1.0), 1.0))
        # integral of precision (slope + intercept / p) over recall (slope * dp / positives)
        pieces = slope * (slope * (p_hi - p_lo) + intercept * log_ratio)
        area = _ratio(jnp.sum(pieces, axis=-1), pos)
    defined = (pos > 0) & (neg > 0)
    return _ratio(jnp.sum(jnp.where(defined, area, 0.0)), jnp.sum(defined))


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
            key = _count_key(spec)
            block = state["counts"][layout[key] : layout[key] + _count_size(key)]
            if spec.counted.kind == "auc":
                out[spec.name] = _curve_area(spec.counted.curve, block, spec.classes, key[2])
            else:
                out[spec.name] = _confusion_result(spec.counted.kind, block, spec.classes)
            continue
        if spec.graphdef is None:
            continue
        computed = nnx.unflatten(spec.graphdef, list(state["objects"][spec.name])).compute()
        if isinstance(computed, dict):
            out.update({f"{spec.name}_{k}" if k != spec.name else k: v for k, v in computed.items()})
        else:
            out[spec.name] = computed
    return out
