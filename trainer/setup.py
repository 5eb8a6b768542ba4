"""What the steps are built from besides the model: the loss, the metrics, the batch keys and the
scalar aux entries of the loss, settled on the first batch of a call (shapes only, no compile)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from trainer import batches as batchlib
from trainer import losses as losslib
from trainer import metrics as metriclib
from trainer import model_state
from trainer.compiled import ContextSlot
from trainer.hooks import host_logs
from trainer.model_state import ModelSpec
from trainer.prepare import LossChoice, choose_loss, scalar_aux_keys
from trainer.session import Session
from trainer.steps import StepContext

if TYPE_CHECKING:
    import optax


class StepSetup:
    """The Trainer's loss, metrics and batch keys, and the step contexts made of them.

    Args:
      loss: the Trainer's ``loss=`` (None: ``model.loss`` or inferred on the first batch).
      metrics: the Trainer's ``metrics=``.
      keys: the names of the parts of dict batches.
    """

    def __init__(self, loss: Any, metrics: Any, keys: batchlib.BatchKeys):
        name, fn = losslib.get_loss(loss) if loss is not None else (None, None)
        self.given = self.loss = LossChoice(name, fn, True)
        self.metrics = metriclib.resolve_metrics(metrics)
        self.keys = keys
        self.aux_keys: tuple[str, ...] | None = None  # known once a first batch was seen
        self.step_keys: tuple[str, ...] = ()  # scalar logs an overridden step adds (averaged)
        # labels come from a dataset in this call: checked on the device (arrays: on the host)
        self.streamed_labels = True
        self._checked: Any = None  # what ``prepare`` last checked

    def contexts(
        self, spec: ModelSpec, tx: optax.GradientTransformation | None, skip_nonfinite: bool = True
    ) -> tuple[StepContext, StepContext]:
        """The train and eval contexts of ``spec``."""
        train = StepContext(
            spec, True, tx, self.loss.fn, self.metrics, self.aux_keys or (), self.keys, skip_nonfinite,
            self.step_keys, self.loss.classes if self.streamed_labels else None,
        )
        return train, dataclasses.replace(train, training=False, tx=None)

    def log_order(self) -> list[str]:
        """The log keys in display order."""
        return ["loss", *(s.name for s in self.metrics)]

    def host_logs(self, logs: dict[str, Any], index: int | None = None) -> dict[str, float]:
        """Device logs as floats; a step key with nothing averaged yet is left out."""
        out = host_logs(logs, self.log_order(), index)
        for key in self.step_keys:
            if key in out and out[key] != out[key]:
                del out[key]
        return out

    def fresh_metrics(self) -> dict[str, Any]:
        """Zeroed running metrics on the device."""
        state = metriclib.init_state(self.metrics, self.aux_keys or ())
        if self.step_keys:
            state["step_means"] = np.zeros((len(self.step_keys), 2), np.float32)
        leaves, treedef = jax.tree.flatten(state)
        return jax.tree.unflatten(treedef, model_state.copy_arrays(leaves))

    def prepare(
        self, session: Session, batch: Any, *, model: Any, tx: Any, slot: ContextSlot, verbose: int,
        call_model: Callable[[Any, Any], Any], compute_loss: Callable[[Any, Any], Any] | None,
    ) -> None:
        """Settle the loss (or, when ``compute_loss`` is the user's, its aux keys) on the
        call's first batch, and give the session fresh metrics.

        Args:
          session: the call's session.
          batch: its first batch.
          model: the user's model (``model.loss``).
          tx: the optimizer's transformation, for the train context.
          slot: where the context is put while shapes are traced.
          verbose: print an inferred loss.
          call_model: the Trainer's ``call_model``.
          compute_loss: the user's ``compute_loss`` override, or None.
        """
        checked = (session.spec.key, session.training, batchlib.shapes_of(batch))
        if checked != self._checked:
            self._check(session, batch, model, tx, slot, verbose, call_model, compute_loss)
            self._checked = checked
        session.state = session.state._replace(metrics=self.fresh_metrics())

    def learn_step_keys(self, keys: tuple[str, ...]) -> None:
        """Keep running means for ``keys`` too (scalars a step returned; see ``NewStepKeys``)."""
        self.step_keys = tuple(sorted(set(self.step_keys) | set(keys)))

    def _check(self, session: Session, batch: Any, model: Any, tx: Any, slot: ContextSlot, verbose: int,
               call_model: Callable[[Any, Any], Any], compute_loss: Callable[[Any, Any], Any] | None) -> None:
        state = session.state
        train_ctx, eval_ctx = self.contexts(session.spec, tx)
        if compute_loss is not None:
            self.loss = self.loss._replace(maskable=False)
            if self.aux_keys is None:
                def aux_of(b: Any) -> Any:
                    with slot.use(train_ctx):
                        return compute_loss(train_ctx.merge(state.params, state.others), b)[1]

                self.aux_keys = scalar_aux_keys(aux_of, batch)
            return
        self.aux_keys = ()
        ctx = train_ctx if session.training else eval_ctx

        def predictions_of(inputs: Any) -> Any:
            with slot.use(ctx):
                return call_model(ctx.merge(state.params, state.others), inputs)

        # a loss inferred on an earlier call is kept (and not announced again)
        given = self.given if self.given.fn is not None or self.loss.name in (None, "model.loss") else self.loss
        self.loss = choose_loss(given, model, batch, self.keys, self.metrics, predictions_of, verbose)
