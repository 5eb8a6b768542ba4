"""Checks made on the first batch before anything compiles: the loss (given, ``model.loss``, or
inferred from the shapes of predictions and targets), the targets it needs, whether the last
batch can be padded and masked, and the scalar aux entries of an overridden ``compute_loss``.
Only shapes are traced (``jax.eval_shape``): nothing runs or compiles.

What is decided here is said once (``announce``): printed to stdout when ``verbose`` is not 0,
beside the progress lines (as Keras prints), and logged at DEBUG on the ``"trainer"`` logger in
any case, for applications that collect it. ``verbose=0`` prints nothing. (Not logged at INFO:
Python's default handler drops INFO records, so a ``verbose=1`` user would see nothing without
configuring logging.)"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

import nnx
from trainer import batches as batchlib
from trainer import losses as losslib
from trainer import metrics as metriclib


class LossChoice(NamedTuple):
    """The loss of the steps: its name (for messages), the function, whether padded rows can be
    masked out of it (a per-example loss and maskable metrics)."""

    name: str | None
    fn: Callable[..., jax.Array] | None
    maskable: bool
    classes: int | None = None  # an integer-label loss: the number of classes (the logits' last axis)


LOGGER = logging.getLogger("trainer")


def announce(message: str, verbose: int) -> None:
    """Print ``message`` when ``verbose`` is not 0; log it at DEBUG on the "trainer" logger.

    Args:
      message: what was decided.
      verbose: the call's verbosity; 0 prints nothing.
    """
    LOGGER.debug(message)
    if verbose:
        print(message)


def _announce_orders(fns: list[Any], verbose: int) -> None:
    """Say once how each Keras-order loss or metric is called."""
    for fn in fns:
        if isinstance(fn, losslib.KerasOrder) and not fn.announced:
            announce(f"Trainer: {fn.note}.", verbose)
            fn.announced = True


def _update_params(spec: metriclib.MetricSpec) -> set[str]:
    metric = nnx.unflatten(spec.graphdef, list(spec.initial))
    try:
        return set(inspect.signature(metric.update).parameters)
    except (TypeError, ValueError):
        return set()


def choose_loss(
    given: LossChoice, model: Any, batch: Any, keys: batchlib.BatchKeys,
    metrics: tuple[metriclib.MetricSpec, ...], predictions_of: Callable[[Any], Any], verbose: int,
) -> LossChoice:
    """The loss for ``batch``, checked against its targets.

    Args:
      given: the loss given to the Trainer (``fn`` None when it was not).
      model: the user's model (``model.loss`` is used when no loss was given).
      batch: the first batch.
      keys: the names of the parts of dict batches.
      metrics: the Trainer's metrics (their ``update`` must take ``mask=`` for masking).
      predictions_of: ``inputs -> predictions`` traced with ``jax.eval_shape``.
      verbose: say the inferred loss (and how Keras-order callables are called) when not 0.
    """
    inputs, targets, _ = batchlib.batch_parts(batch, keys)
    if inputs is None and isinstance(batch, dict):
        raise KeyError(
            f"The dict batches have no input key {keys.inputs!r} (they have "
            f"{sorted(batch)}); pass Trainer(input_keys=..., target_key=...)."
        )
    if targets is None and isinstance(batch, dict):
        raise ValueError(
            f"The dict batches have no target key {keys.target!r} (they have "
            f"{sorted(batch)}); pass Trainer(target_key=...) or override compute_loss."
        )
    if targets is None:
        raise ValueError(
            "The batches hold no targets: pass y, (x, y) batches, or dict batches with the "
            f"key {keys.target!r} (Trainer(target_key=...))."
        )
    predictions = jax.eval_shape(predictions_of, inputs)
    name, fn = given.name, given.fn
    if fn is None:
        model_loss = getattr(model, "loss", None)
        if callable(model_loss) and not isinstance(model_loss, nnx.Module):
            name, fn = "model.loss", model_loss
        else:
            name = losslib.infer_loss(predictions, targets)
            fn = losslib.LOSSES[name]
            announce(
                f"Trainer: loss={name!r} ({losslib.describe(name, predictions)}), inferred from "
                f"predictions {tuple(predictions.shape)} and targets "
                f"{tuple(np.shape(targets))} {np.dtype(targets.dtype).name}; pass "
                "loss=... to choose another.",
                verbose,
            )
    _announce_orders([fn, *(s.fn for s in metrics)], verbose)
    metriclib.bind_classes(metrics, predictions)
    if fn is losslib.LOSSES.get(name):
        losslib.check_targets(name, predictions, targets)
    target_spec = jax.ShapeDtypeStruct(np.shape(targets), targets.dtype)
    out = jax.eval_shape(fn, predictions, target_spec)
    maskable = getattr(out, "ndim", 0) >= 1 and all(
        "mask" in _update_params(s) for s in metrics if s.graphdef is not None
    )
    classes = None
    if name == "sparse_categorical_crossentropy" and fn is losslib.LOSSES.get(name):
        classes = int(predictions.shape[-1])
    return LossChoice(name, fn, maskable, classes)


def scalar_aux_keys(aux_of: Callable[[Any], dict[str, Any]], batch: Any) -> tuple[str, ...]:
    """The names of the scalar entries of ``aux_of(batch)`` (shapes traced only), sorted;
    names starting with ``_`` are private."""
    aux = jax.eval_shape(aux_of, batch)
    return tuple(sorted(k for k, v in aux.items() if getattr(v, "shape", None) == () and not k.startswith("_")))
