"""The default train, eval and predict steps: pure functions of an explicit ``StepContext``.

A step takes a ``TrainState`` and a batch and returns the new state and the running logs (the
predict step returns the outputs). Everything a step depends on besides its arguments is in the
``StepContext``: the model's spec, the mode, the optax transformation, the loss, the metrics and
the batch keys. The Trainer's overridable methods (``compute_loss``, ``train_step``, ...) call
these functions with the context of the compiled call being traced (``Trainer.context``), and the
compiled forms are cached by that context (see ``compiled.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from trainer import batches as batchlib
from trainer import metrics as metriclib
from trainer import model_state
from trainer.model_state import (
    BAD_LABEL,
    BAD_LABEL_VALUE,
    FIRST_NONFINITE,
    LONGEST,
    NONFINITE,
    STEP,
    STREAK,
    ModelSpec,
    TrainState,
)

if TYPE_CHECKING:
    import optax

ComputeLoss = Callable[[Any, Any], tuple[jax.Array, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a compiled step closes over (hashable: it is the compiled steps' cache key).

    Attributes:
      spec: the split model (identity-hashed; one per split).
      training: the mode: train (Dropout on, BatchNorm batch statistics) or eval.
      tx: the optax transformation applied by the train step (the user's, with the Trainer's
        learning-rate multiplier chained after it); None outside training.
      loss_fn: ``loss(predictions, targets)`` per example; None when ``compute_loss`` is
        overridden and no loss was given.
      metrics: the resolved metrics.
      aux_keys: the scalar aux entries of ``compute_loss`` kept as running means.
      keys: the names of the parts of dict batches.
      skip_nonfinite: a train step whose loss or gradients are not finite leaves the state
        unchanged (but the counters).
      step_keys: scalar logs an overridden step returns beyond ``compute_logs``'s: each is
        averaged over the steps of the epoch (non-finite values left out) and logged.
      label_classes: the number of classes of an integer-label loss: a target outside
        ``0 .. label_classes - 1`` makes the batch's loss NaN (so the step is skipped) and is
        recorded in the counters, for the host to raise.
    """

    spec: ModelSpec
    training: bool
    tx: optax.GradientTransformation | None
    loss_fn: Callable[[Any, Any], jax.Array] | None
    metrics: tuple[metriclib.MetricSpec, ...]
    aux_keys: tuple[str, ...]
    keys: batchlib.BatchKeys
    skip_nonfinite: bool = True
    step_keys: tuple[str, ...] = ()
    label_classes: int | None = None

    def merge(self, params: Any, others: tuple) -> Any:
        """A model (inside the trace) from the state's arrays, in this context's mode."""
        return model_state.merge(self.spec, params, others, self.training)


def call_model(ctx: StepContext, model: Any, inputs: Any) -> Any:
    """Call the model: tuple inputs are positional, a dict is keywords, anything else one
    argument; ``train=`` / ``training=`` is passed when the model's ``__call__`` takes it."""
    kwargs = {ctx.spec.train_kw: ctx.training} if ctx.spec.train_kw else {}
    if isinstance(inputs, tuple):
        return model(*inputs, **kwargs)
    if isinstance(inputs, dict):
        return model(**inputs, **kwargs)
    return model(inputs, **kwargs)


def weighted_mean(values: jax.Array, weights: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(sum(w * v) / sum(w), sum(w))``; 0 (not NaN) when every weight is 0."""
    if values.ndim == 0:
        total = jnp.asarray(1.0, jnp.float32) if weights is None else jnp.sum(weights).astype(jnp.float32)
        return values, total
    if weights is None:
        return jnp.mean(values), jnp.asarray(values.shape[0], jnp.float32)
    w = jnp.asarray(weights, jnp.float32).reshape(values.shape[0], *([1] * (values.ndim - 1)))
    w = jnp.broadcast_to(w, values.shape)
    total = jnp.sum(w)
    safe = jnp.where(total == 0, 1.0, total)
    weight_total = jnp.sum(jnp.asarray(weights, jnp.float32))
    return jnp.sum(values * w) / safe, weight_total


def compute_loss(
    ctx: StepContext, model: Any, batch: Any, call: Callable[[Any, Any], Any]
) -> tuple[jax.Array, dict[str, Any]]:
    """The weighted mean of the per-example loss of ``call(model, inputs)``, and the aux dict
    ``{"predictions", "per_example_loss"}``."""
    inputs, targets, weights = batchlib.batch_parts(batch, ctx.keys)
    predictions = call(model, inputs)
    per_example = ctx.loss_fn(predictions, targets)
    loss, _ = weighted_mean(per_example, weights)
    aux = {"predictions": predictions, "per_example_loss": per_example}
    if ctx.label_classes is not None and targets is not None:
        labels = jnp.asarray(targets).astype(jnp.int32)
        outside = ((labels < 0) | (labels >= ctx.label_classes)).reshape(labels.shape[0], -1)
        if weights is not None:  # rows that weigh 0 (padding) do not count
            outside = outside & (jnp.asarray(weights).reshape(-1, 1) > 0)
        outside, labels = outside.reshape(-1), labels.reshape(-1)
        any_outside = jnp.any(outside)
        aux["_bad_label"] = jnp.stack([any_outside.astype(jnp.int32), labels[jnp.argmax(outside)]])
        loss = jnp.where(any_outside, jnp.nan, loss)
    return loss, aux


def apply_gradients(
    ctx: StepContext, state: TrainState, batch: Any, loss_of_model: ComputeLoss
) -> tuple[TrainState, jax.Array, dict[str, Any]]:
    """One optimizer step: the gradients of ``loss_of_model(model, batch)`` with respect to
    the trained leaves, ``ctx.tx``'s update, and the new values of the other leaves (BatchNorm
    statistics, RNG counters) as the merged model left them. Returns ``(state, loss, aux)``.

    With ``ctx.skip_nonfinite``, a step whose loss or gradients are not finite is counted
    (``count_nonfinite``) and leaves parameters, statistics and optimizer state as they were:
    decided on the device, so no host sync is added. Without it, a step with a non-finite loss
    is counted (checking the gradients too would cost a pass over them every step).
    """

    def loss_of(params: Any) -> tuple[jax.Array, tuple[dict, tuple]]:
        model = ctx.merge(params, state.others)
        loss, aux = loss_of_model(model, batch)
        return loss, (aux, model_state.read_others(ctx.spec, model, state.others))

    (loss, (aux, others)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)

    def update(_: Any) -> tuple[Any, tuple, Any]:
        updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
        import optax  # imported when the first step is traced (a tenth of a second)

        return optax.apply_updates(state.params, updates), others, opt_state

    if ctx.skip_nonfinite:
        finite = jnp.isfinite(loss) & all_finite(grads)
        # a conditional runs one branch: cheaper than selecting between both results
        params, others, opt_state = jax.lax.cond(
            finite, update, lambda _: (state.params, state.others, state.opt_state), None
        )
    else:
        # no skipping: only the loss is checked (non-finite gradients show in the next loss)
        finite = jnp.isfinite(loss)
        params, others, opt_state = update(None)
    new = state._replace(params=params, others=others, opt_state=opt_state)
    return count_nonfinite(new, ~finite), loss, aux


# Floating-point leaves up to this many elements are checked together, through one copy
# into a single vector; larger ones are reduced each on its own (no copy).
SMALL_LEAF = 1 << 16


def all_finite(tree: Any) -> jax.Array:
    """Whether every element of every floating-point leaf is finite (a scalar bool).

    Decided from the sum of the elements times zero: 0 when every element is finite, NaN as
    soon as one is NaN or infinite (exact: no overflow, no cancellation). XLA on a CPU pays
    a kernel (about a microsecond) per reduction, which for a model of many small leaves costs
    more than the check's arithmetic, so the small leaves are concatenated into one vector and
    reduced once; each large leaf is reduced on its own.
    """
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    leaves = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact) and x.size]
    small, parts = [], []
    for x in leaves:
        if x.size <= SMALL_LEAF and jnp.issubdtype(x.dtype, jnp.floating):
            small.append(x)
        else:  # large, or complex
            parts.append(jnp.sum(x * 0))
    if small:
        parts.append(jnp.sum(jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in small]) * 0))
    if not parts:
        return jnp.asarray(True)
    return jnp.isfinite(sum(parts))


def count_nonfinite(state: TrainState, bad: jax.Array) -> TrainState:
    """Count a non-finite step: the total, the first one, the streak and the longest streak."""
    c = state.counters
    bad_i = bad.astype(jnp.int32)
    first = jnp.where(bad & (c[FIRST_NONFINITE] < 0), c[STEP], c[FIRST_NONFINITE])
    streak = (c[STREAK] + 1) * bad_i
    counters = jnp.stack([
        c[STEP], c[model_state.POS], c[NONFINITE] + bad_i, first, streak, jnp.maximum(c[LONGEST], streak),
        c[BAD_LABEL], c[BAD_LABEL_VALUE],
    ])
    return state._replace(counters=counters)


def evaluate_loss(
    ctx: StepContext, state: TrainState, batch: Any, loss_of_model: ComputeLoss
) -> tuple[TrainState, jax.Array, dict[str, Any]]:
    """The loss and aux of one batch in the context's mode, parameters unchanged; a
    non-finite loss is counted."""
    loss, aux = loss_of_model(ctx.merge(state.params, state.others), batch)
    return count_nonfinite(state, ~jnp.isfinite(loss)), loss, aux


def predict(ctx: StepContext, state: TrainState, batch: Any, call: Callable[[Any, Any], Any]) -> Any:
    """The outputs of ``call(model, inputs)`` for one batch."""
    return call(ctx.merge(state.params, state.others), batchlib.batch_parts(batch, ctx.keys)[0])


def update_metrics(ctx: StepContext, state: TrainState, batch: Any, loss: jax.Array, aux: dict) -> TrainState:
    """Add a batch to the running metrics and count the step; a batch whose loss is not
    finite adds nothing (it is counted by ``count_nonfinite``)."""
    _, targets, weights = batchlib.batch_parts(batch, ctx.keys)
    if weights is not None:
        weight_total = jnp.sum(jnp.asarray(weights, jnp.float32))
    else:
        weight_total = jnp.asarray(batchlib.batch_size_of(batch), jnp.float32)
    finite = jnp.isfinite(loss)
    metrics = metriclib.update_state(
        ctx.metrics,
        state.metrics,
        aux_keys=ctx.aux_keys,
        loss=jnp.where(finite, loss, 0.0),
        weight_total=weight_total,
        aux=aux,
        predictions=aux.get("predictions"),
        targets=targets,
        weights=weights,
        per_example_loss=aux.get("per_example_loss"),
    )
    metrics = {**state.metrics, **metrics}  # (step means are added by add_step_logs)
    metrics = jax.tree.map(lambda a, b: jnp.where(finite, a, b), metrics, state.metrics)
    counters = state.counters + model_state.NEXT_STEP
    if "_bad_label" in aux:  # the first integer target outside the classes
        flag, value = aux["_bad_label"][0], aux["_bad_label"][1]
        first = (counters[BAD_LABEL] == 0) & (flag > 0)
        counters = counters.at[BAD_LABEL].max(flag).at[BAD_LABEL_VALUE].set(
            jnp.where(first, value, counters[BAD_LABEL_VALUE])
        )
    return state._replace(metrics=metrics, counters=counters)


def add_step_logs(ctx: StepContext, state: TrainState, logs: dict[str, Any]) -> TrainState:
    """Add the ``ctx.step_keys`` values a step returned to their running means."""
    rows = []
    for key in ctx.step_keys:
        value = jnp.asarray(logs[key], jnp.float32) if key in logs else jnp.asarray(jnp.nan, jnp.float32)
        ok = jnp.isfinite(value)
        rows.append(jnp.stack([jnp.where(ok, value, 0.0), ok.astype(jnp.float32)]))
    metrics = {**state.metrics, "step_means": state.metrics["step_means"] + jnp.stack(rows)}
    return state._replace(metrics=metrics)


def compute_logs(ctx: StepContext, state: TrainState) -> dict[str, jax.Array]:
    """The running values of the loss and metrics, and the non-finite step counters."""
    logs = metriclib.results(ctx.metrics, state.metrics, ctx.aux_keys)
    if ctx.step_keys and "step_means" in state.metrics:
        means = state.metrics["step_means"]
        # NaN where nothing was added (a key of the train step during evaluation): not logged
        values = jnp.where(means[:, 1] == 0, jnp.nan, means[:, 0] / jnp.where(means[:, 1] == 0, 1.0, means[:, 1]))
        logs.update({key: values[i] for i, key in enumerate(ctx.step_keys)})
    logs["_nonfinite"] = state.counters[NONFINITE]
    logs["_first_nonfinite"] = state.counters[FIRST_NONFINITE]
    return logs
