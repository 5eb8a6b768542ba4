"""The machinery of the Trainer's calls: opening a session over the model, the step contexts,
the compiled steps, the batch plans and the loops.

``Runtime`` depends on the Trainer only through its public surface: the overridable step
methods, and the options ``donate``, ``skip_nonfinite``, ``steps_per_execution`` and
``max_consecutive_nonfinite``, read when a call starts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax

from trainer import arguments as args
from trainer import data as datalib
from trainer import model_state
from trainer import optimizer as optlib
from trainer.compiled import ContextSlot, NewStepKeys, Program, StepCompiler
from trainer.data import ArrayData, IterData
from trainer.hooks import Hooks
from trainer.loop import FusionTuner, Loop, Progress
from trainer.model_state import TrainState
from trainer.optimizer import OptimizerState
from trainer.placement import Placement
from trainer.plan import BatchPlan
from trainer.session import Session
from trainer.setup import StepSetup
from trainer.steps import StepContext

logger = logging.getLogger("trainer")


@dataclasses.dataclass
class FitSources:
    """The training plan and validation source of a fit, placed; and the unplaced sources,
    whose integer labels ``check_labels`` checks on the host (once the loss is settled)."""

    plan: BatchPlan
    val: ArrayData | IterData | None
    unplaced: tuple[Any, ...]
    setup: StepSetup

    def check_labels(self) -> None:
        for source in self.unplaced:
            args.check_labels(source, self.setup.loss.classes, self.setup.keys)


class Runtime:
    """Sessions, contexts, compiled steps and loops of one Trainer.

    Args:
      owner: the Trainer (its step methods and options, see the module docstring).
      model: the user's model.
      optimizer: the Trainer's optimizer state holder.
      setup: the loss, metrics and batch keys.
      progress: the Trainer's counters.
    """

    def __init__(self, owner: Any, model: Any, optimizer: OptimizerState, setup: StepSetup, progress: Progress,
                 placement: Placement | None = None):
        self.owner, self.model, self.optimizer, self.setup, self.progress = owner, model, optimizer, setup, progress
        self.placement = placement or Placement()
        self.slot = ContextSlot()
        self.compiler = StepCompiler(
            {"train": lambda: owner.train_step, "eval": lambda: owner.eval_step,
             "predict": lambda: owner.predict_step, "logs": lambda: owner.compute_logs},
            self.slot,
        )
        self.tuner = FusionTuner()
        self.session: Session | None = None  # the call in progress (the innermost one)
        self._spec: model_state.ModelSpec | None = None

    @contextmanager
    def open(self, training: bool, first_batch: Any = None, verbose: int = 0,
             custom_loss: bool = False) -> Iterator[Session]:
        """A session for a call; one nested in a fit's callback keeps the fit's aside.

        The model is split (the spec is reused while its structure is unchanged), put in train
        or eval mode, and with ``first_batch`` the loss is settled on it (``custom_loss``: the
        owner overrides ``compute_loss``). On exit the state is written back, the mode restored
        and the optimizer state kept.
        """
        owner, optimizer = self.owner, self.optimizer
        outer = self.session
        spec, _, saved = model_state.split_model(self.model, optimizer.wrt, previous=self._spec)
        self._spec = spec
        params, others = model_state.initial_arrays(spec, copy=owner.donate and training)
        params, others = self.placement.model_arrays(spec, params, others)
        opt_state = optimizer.ensure(params) if training else None
        state = TrainState(params, others, opt_state, {}, model_state.new_counters(self.progress.step))
        if training:
            state = self.placement.session_state(state, spec, optimizer.full_tx.init)
        session = self.session = Session(spec, saved, state, training)
        (self.model.train if training else self.model.eval)()
        try:
            if first_batch is not None:
                self.setup.prepare(
                    session, first_batch, model=self.model, tx=optimizer.full_tx, slot=self.slot,
                    verbose=verbose, call_model=owner.call_model,
                    compute_loss=owner.compute_loss if custom_loss else None,
                )
            yield session
        finally:
            session.close()
            if training:
                optimizer.state = session.state.opt_state
                optimizer.write_to_nnx_optimizer(self.progress.step)
            self.session = outer

    def contexts(self, session: Session) -> tuple[StepContext, StepContext]:
        """The train and eval contexts of the session's model."""
        return self.setup.contexts(session.spec, self.optimizer.full_tx, self.owner.skip_nonfinite)

    def loop(self, session: Session, hooks: Hooks) -> Loop:
        """The loop of a call over ``session`` with ``hooks``."""
        train_ctx, eval_ctx = self.contexts(session)
        owner = self.owner
        tuner = self.tuner if owner.steps_per_execution == "auto" else None

        def learn_keys(keys: tuple[str, ...]) -> tuple[StepContext, StepContext]:
            self.setup.learn_step_keys(keys)
            return self.contexts(session)

        return Loop(
            self.compiler, train_ctx if session.training else eval_ctx, eval_ctx, session, hooks,
            self.progress, donate=owner.donate, tuner=tuner,
            max_consecutive_nonfinite=owner.max_consecutive_nonfinite,
            learn_keys=learn_keys, fresh_metrics=self.setup.fresh_metrics,
            shardings_of=self.placement.state_shardings,
            place=lambda: self._place(session), serial=self.placement.serial,
        )

    def _place(self, session: Session) -> None:
        if self.placement.mesh is not None and session.training:
            placed = self.placement.session_state(session.state, session.spec, self.optimizer.full_tx.init)
            session.state = placed

    def plan(self, data: Any, kind: str, batch_size: int, **options: Any) -> BatchPlan:
        """The batch plan of a pass (``steps_per_execution`` blocks unless "auto")."""
        spe = self.owner.steps_per_execution
        return BatchPlan(
            data, kind, batch_size, fused=spe if isinstance(spe, int) else 1, keys=self.setup.keys,
            put=self.placement.batch, **options,
        )

    def fit_sources(
        self, data: ArrayData | IterData, batch_size: int, *, validation_split: float, validation_data: Any,
        epochs: int, initial_epoch: int, steps_per_epoch: int | None, validation_steps: int | None, validation_freq: Any,
        drop_remainder: bool,
    ) -> FitSources:
        """Split off and check the validation source, place both, and plan the epochs."""
        val = None
        if validation_split:
            data, val = datalib.split_tail(data, validation_split)
        if validation_data is not None:
            val = args.validation_source(validation_data, self.setup.keys)
        args.check_one_shot(data, epochs, initial_epoch, steps_per_epoch)
        self.placement.check_batch_size(batch_size)
        unplaced = tuple(d for d in (data, val) if d is not None)
        self.setup.streamed_labels = any(isinstance(d, IterData) for d in unplaced)
        data, val = self.placement.data(data, batch_size), self.placement.data(val, batch_size)
        if val is not None:
            args.check_one_shot_validation(val, epochs - initial_epoch, validation_steps, validation_freq)
        plan = self.plan(data, "train", batch_size, steps=steps_per_epoch, drop_remainder=drop_remainder)
        return FitSources(plan, val, unplaced, self.setup)

    def epoch_logs(
        self, loop: Loop, val: Any, batch_size: int, validation_steps: int | None, validation_freq: Any,
        callbacks: Any,
    ) -> Callable[[int], dict[str, float]]:
        """``epoch_logs(epoch)`` for ``Loop.fit``: the epoch's running logs, the validation
        results (when ``validation_freq`` says so) and the learning-rate logs."""
        opt_state = self.owner.optimizer_state
        scale_logged = optlib.lr_scale(opt_state()) != 1.0 or any(c.changes_learning_rate for c in callbacks)

        def logs_of(epoch: int) -> dict[str, float]:
            logs = self.logs(loop.session)
            if val is not None and args.validate_now(epoch, validation_freq):
                val_logs = self.evaluate(loop, val, batch_size, validation_steps, in_fit=True)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            return {**logs, **optlib.lr_logs(opt_state(), scale_logged)}

        return logs_of

    def evaluate(self, loop: Loop, data: Any, batch_size: int, steps: int | None, in_fit: bool) -> dict[str, float]:
        """An evaluation pass over ``data`` in ``loop`` (validation inside a fit, or evaluate):
        its results, also handed to ``on_test_end`` unless the pass was interrupted (then they
        cover only the batches it reached, and a warning says so)."""
        plan = self.plan(data, "eval", batch_size, steps=steps, pad=self.setup.loss.maskable)
        plan.with_logs = loop.hooks.wants_logs("test")
        state = loop.evaluate(plan, self.setup.fresh_metrics(), in_fit)
        results = self.logs(loop.session, state)
        if self.progress.interrupted and not in_fit:
            logger.warning("Trainer: evaluate was interrupted; the results cover only the batches it reached.")
            return results
        loop.hooks.call("on_test_end", results)
        return results

    def logs(self, session: Session, state: TrainState | None = None) -> dict[str, float]:
        """The running logs of ``state`` (the session's by default), fetched to the host."""
        state = session.state if state is None else state
        fn = self.compiler.get("logs", self.contexts(session)[1])
        return self.setup.host_logs(fn(state.metrics, state.counters))

    def one_batch(self, session: Session, kind: str, batch: Any) -> Any:
        """One step of ``kind`` on one fed batch: its logs (train, eval) or outputs (predict)."""
        training = kind == "train"
        leaves, treedef = session.flat()
        if kind == "eval":  # fresh counters, and the live state left alone
            state = session.state
            state = TrainState(state.params, state.others, None, state.metrics, model_state.new_counters())
            leaves, treedef = jax.tree.flatten(state)
        ctx = self.contexts(session)[0 if training else 1]
        fn = self.compiler.get(kind, ctx, Program(kind), treedef, self.owner.donate and training)
        if kind == "predict":
            return jax.device_get(fn(leaves, self.placement.batch(batch), None, None, None))
        try:
            leaves, _ = fn(leaves, self.placement.batch(batch), None, None)
        except NewStepKeys as new:  # raised while tracing: nothing ran
            self.setup.learn_step_keys(new.keys)
            session.state = session.state._replace(metrics=self.setup.fresh_metrics())
            return self.one_batch(session, kind, batch)
        if training:
            session.set_flat(leaves)
        return self.logs(session, jax.tree.unflatten(treedef, leaves))
