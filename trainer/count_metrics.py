"""Counted metrics: precision, recall, f1 and the areas under the ROC and PR curves.

These are not means of per-example values: each is computed from weighted counts accumulated
over the epoch in the ``counts`` vector of the running state (see ``metrics.py``), laid out by
``count_layout``. Metrics that need the same counts share them.

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
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.metric_functions import class_labels, is_binary

if TYPE_CHECKING:
    from trainer.metrics import MetricSpec


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


def count_key(spec: MetricSpec) -> tuple[Any, ...]:
    """What a counted metric accumulates (metrics with the same key share their counts)."""
    c = spec.counted
    if c.kind == "auc":
        return ("histogram", spec.classes, c.num_thresholds, c.from_logits)
    return ("confusion", spec.classes, c.from_logits)


def count_size(key: tuple[Any, ...]) -> int:
    """The length of the count block ``key`` in the ``counts`` vector."""
    # confusion: (tp, fp, fn) per class; histogram: (positives, negatives) per class and bucket
    return 3 * key[1] if key[0] == "confusion" else 2 * key[1] * key[2]


def count_layout(specs: tuple[MetricSpec, ...]) -> dict[tuple[Any, ...], int]:
    """The offset of each distinct count block in the ``counts`` vector, in spec order."""
    layout: dict[tuple[Any, ...], int] = {}
    size = 0
    for spec in specs:
        if spec.counted is not None and count_key(spec) not in layout:
            layout[count_key(spec)] = size
            size += count_size(count_key(spec))
    return layout


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
    columns = 1 if is_binary(predictions) else predictions.shape[-1]
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
    labels = class_labels(predictions, targets).reshape(-1)
    truth = jax.nn.one_hot(labels, classes, dtype=jnp.float32)
    predicted = jax.nn.one_hot(jnp.argmax(x, axis=-1), classes, dtype=jnp.float32)
    scores = jax.nn.softmax(x, axis=-1) if from_logits else x
    return scores, predicted, truth, lead


def counts_of_batch(
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


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    return num / jnp.where(den == 0, 1.0, den)


def confusion_result(kind: str, block: jax.Array, classes: int) -> jax.Array:
    """Precision, recall or f1 from a confusion block, macro-averaged over the classes that
    occur."""
    tp, fp, fn = block.reshape(3, classes)
    per_class = {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }[kind]
    occurs = (tp + fp + fn) > 0
    return _ratio(jnp.sum(jnp.where(occurs, per_class, 0.0)), jnp.sum(occurs))


def curve_area(curve: str, block: jax.Array, classes: int, n: int) -> jax.Array:
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
