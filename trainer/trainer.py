"""Trainer: Keras-style ``fit`` / ``evaluate`` / ``predict`` over an nnx Module and optax.

The Trainer composes its parts: ``OptimizerState`` (the optax state and learning rate),
``Session`` (the live state of a call and the user's model kept in step), ``BatchPlan`` (the work
units of a pass), ``StepCompiler`` (the compiled steps, cached by what they close over), ``Loop``
(the host loop and its hooks) and ``checkpointing`` (the checkpoint tree and its storage). The
overridable methods below are the steps; their defaults are the pure functions of ``steps.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

import nnx
from callbacks.base import Callback, CallbackList
from callbacks.history import History
from trainer import arguments as args
from trainer import batches as batchlib
from trainer import data as datalib
from trainer import optimizer as optlib
from trainer import steps as steplib
from trainer.checkpoints import Checkpoints
from trainer.data import ArrayData, IterData
from trainer.hooks import Hooks, callback_list
from trainer.interrupt import interrupt_progress
from trainer.loop import Progress, stitch_outputs
from trainer.model_state import TrainState
from trainer.placement import Placement
from trainer.plan import BatchPlan, steps_of
from trainer.runtime import Runtime
from trainer.setup import StepSetup
from trainer.steps import StepContext
from trainer.summary import summary_text


class Trainer:
    """Compiled training, evaluation and prediction for an nnx Module.

    Args:
      model: the ``nnx.Module`` to train; it is kept up to date in place.
      optimizer: an optax ``GradientTransformation``, or an ``nnx.Optimizer`` of ``model``.
      loss: None (``model.loss`` or inferred from the first batch), a built-in name, or a
        callable ``loss(predictions, targets)`` in optax's argument order (Keras's is the
        reverse) returning one loss per example.
      metrics: metric names ("accuracy", "top_k_accuracy", "mae", "mse") or nnx.metrics objects.
      callbacks: callbacks used by every call (``fit`` may add more).
      seed: seeds the per-epoch shuffle (a pure function of ``(seed, epoch)``).
      steps_per_execution: steps fused into one compiled call with ``lax.scan``; ``"auto"``
        measures the step time on the first steps and fuses as many as run in about 0.1 s
        (1 while a batch hook needs every step, see ``Callback.fusable_batch_hooks``). Logs and
        results are the same as with 1.
      wrt: a filter choosing the Variables to train; the rest are frozen.
      donate: donate the state buffers to each step (the Trainer owns copies).
      skip_nonfinite: a train step whose loss or gradients are not finite (NaN, inf) leaves
        parameters, statistics and optimizer state as they were; such steps are counted in the
        logs (``nonfinite_steps``, ``first_nonfinite_step``). With False every update is
        applied and the steps with a non-finite loss are counted.
      max_consecutive_nonfinite: stop training after this many non-finite steps in a row
        (``stop_reason`` is then ``"nonfinite"``); None never stops.
      input_keys, target_key, weight_key: the parts of dict batches.
      mesh: None (one device), ``"auto"`` (every device along one data axis) or a
        ``jax.sharding.Mesh``: batches are split over its ``data_axis`` (data parallelism;
        the global batch is ``batch_size``, which must divide by the axis's size).
      data_axis: the mesh axis that splits batches.

    Example::

      >>> trainer = Trainer(model, optax.adam(1e-3), metrics=("accuracy",))
      >>> history = trainer.fit(x, y, epochs=5, validation_split=0.2)
    """

    def __init__(
        self, model: Any, optimizer: Any, *, loss: Any = None, metrics: Any = None,
        callbacks: Any = None, seed: int = 0, steps_per_execution: int | str = "auto",
        wrt: Any = nnx.Param, donate: bool = True, skip_nonfinite: bool = True,
        max_consecutive_nonfinite: int | None = 10, input_keys: Any = "x", target_key: str = "y",
        weight_key: str = "sample_weight", mesh: Any = None, data_axis: str = "data",
    ):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"Trainer(model=...) expects an nnx.Module, got {type(model).__name__}.")
        self._model = model
        self._opt = optlib.OptimizerState(optimizer, model, wrt)
        self.steps_per_execution = args.steps_per_execution(steps_per_execution)
        self.donate = bool(donate)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.max_consecutive_nonfinite = args.optional_count("max_consecutive_nonfinite", max_consecutive_nonfinite)
        inputs = input_keys if isinstance(input_keys, str) else tuple(input_keys)
        self._setup = StepSetup(loss, metrics, batchlib.BatchKeys(inputs, target_key, weight_key))
        self._callbacks = list(callbacks or [])
        self._progress = Progress()
        self.seed = seed
        self._placement = Placement(mesh, data_axis)
        self._runtime = Runtime(self, model, self._opt, self._setup, self._progress, self._placement)
        self._checkpoints = Checkpoints(
            model, self._opt, self._progress, opt_state=self.optimizer_state,
            live=lambda: (self._runtime.session, self.callbacks, self._fit_data), donate=lambda: self.donate,
            setup=self._setup, placement=self._placement,
        )
        self._running: CallbackList | None = None  # the callbacks of the fit in progress
        self._fit_data: Any = None  # the training source of the fit in progress
        self._last_batch: Any = None
        self.history: History | None = None

    def __repr__(self) -> str:
        optimizer = self._opt.describe()
        loss = self._setup.loss.name or "inferred on the first batch"
        metrics = [s.name for s in self._setup.metrics]
        return (
            f"Trainer(model={type(self._model).__name__}, optimizer={optimizer}, loss={loss!r}, "
            f"metrics={metrics}, steps_per_execution={self.steps_per_execution!r})"
        )

    # -- public attributes -------------------------------------------------------------
    step = property(lambda self: self._progress.step, lambda self, v: setattr(self._progress, "step", int(v)),
                    doc="Optimizer steps taken so far.")
    epoch = property(lambda self: self._progress.epoch, lambda self, v: setattr(self._progress, "epoch", int(v)),
                     doc="The epoch in progress (or the next one).")
    interrupted = property(lambda self: self._progress.interrupted,
                           doc="Whether the last ``fit`` / ``evaluate`` / ``predict`` was stopped by Ctrl-C.")

    @property
    def stop_training(self) -> bool:
        """Set to True (by a callback) to stop after the current step."""
        return self._progress.stop

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        p = self._progress
        p.stop = bool(value)
        p.stop_reason = (p.stop_reason or "callback") if p.stop else None

    @property
    def stop_reason(self) -> str | None:
        """Why the last ``fit`` stopped early: None (it ran its epochs), ``"interrupted"``
        (Ctrl-C), ``"nonfinite"`` (``max_consecutive_nonfinite``), ``"max_steps"``, or the
        reason a callback gave (``"callback"`` when it only set ``stop_training``)."""
        return self._progress.stop_reason

    @stop_reason.setter
    def stop_reason(self, value: str | None) -> None:
        self._progress.stop_reason = value

    @property
    def seed(self) -> int:
        """The seed of the per-epoch shuffle; setting it resets the shuffle key."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = args.seed(value)
        # the shuffle order of each epoch derives from this key; checkpoints hold it
        self._progress.shuffle_key = jax.random.key(self._seed)

    @property
    def callbacks(self) -> list[Callback]:
        """The callbacks of the ``fit`` in progress, in the order they are called (the given
        ones, History, the checkpointing callbacks, the ProgressBar); outside ``fit``, the
        callbacks given to the Trainer. Checkpoints save and restore their ``state_dict``."""
        return list(self._running if self._running is not None else self._callbacks)

    @property
    def model(self) -> Any:
        """The user's model object, current whenever a callback runs and after every call."""
        if self._runtime.session is not None:
            self._runtime.session.sync()
        return self._model

    @property
    def optimizer(self) -> Any:
        """The optimizer given to the Trainer (an optax transformation or ``nnx.Optimizer``)."""
        return self._opt.user

    @property
    def context(self) -> StepContext:
        """The ``StepContext`` of the compiled step being traced (only inside a step)."""
        current = self._runtime.slot.current
        if current is None:
            raise RuntimeError("Trainer.context exists only inside the Trainer's compiled steps.")
        return current

    @property
    def learning_rate(self) -> float | None:
        """The ``learning_rate`` of an ``inject_hyperparams`` optimizer; None for others."""
        return optlib.learning_rate(self.optimizer_state())

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._opt.replace(self._runtime.session, optlib.with_learning_rate(self.optimizer_state(), value))

    @property
    def lr_scale(self) -> float:
        """The multiplier chained after the optimizer (1.0 unless changed); see ``lr.py``."""
        return optlib.lr_scale(self.optimizer_state())

    @lr_scale.setter
    def lr_scale(self, value: float) -> None:
        self._opt.replace(self._runtime.session, optlib.with_lr_scale(self.optimizer_state(), value))

    def optimizer_state(self) -> Any:
        """The optax state, live during a ``fit`` (initialized on first use)."""
        return self._opt.live(self._runtime.session, self._model)

    # -- overridable steps (compiled; ``self.context`` is the step's context) ------------
    def call_model(self, model: Any, inputs: Any) -> Any:
        """Call ``model`` on ``inputs`` in the step's mode (passes ``train=``/``training=``)."""
        return steplib.call_model(self.context, model, inputs)

    def compute_loss(self, model: Any, batch: Any) -> tuple[jax.Array, dict[str, Any]]:
        """The batch's loss and an aux dict (compiled; override for full control).

        The default calls the model on the batch's inputs and takes the weighted mean of the
        per-example loss. Scalar aux entries appear in the logs; ``aux['predictions']`` (when
        present) feeds the metrics.
        """
        return steplib.compute_loss(self.context, model, batch, self.call_model)

    def train_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimization step (pure, compiled): loss, gradients, optax update, metrics."""
        state, loss, aux = steplib.apply_gradients(self.context, state, batch, self.compute_loss)
        state = self.update_metrics(state, batch, loss, aux)
        return state, self.compute_logs(state)

    def eval_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """One evaluation step (pure, compiled): the loss and metrics in eval mode."""
        state, loss, aux = steplib.evaluate_loss(self.context, state, batch, self.compute_loss)
        state = self.update_metrics(state, batch, loss, aux)
        return state, self.compute_logs(state)

    def predict_step(self, state: TrainState, batch: Any) -> Any:
        """The model's outputs for one batch (pure, compiled, eval mode)."""
        return steplib.predict(self.context, state, batch, self.call_model)

    def update_metrics(self, state: TrainState, batch: Any, loss: jax.Array, aux: dict) -> TrainState:
        """Add a batch to the running metrics and count a non-finite loss (pure)."""
        return steplib.update_metrics(self.context, state, batch, loss, aux)

    def compute_logs(self, state: TrainState) -> dict[str, jax.Array]:
        """The running values of loss and metrics (pure)."""
        return steplib.compute_logs(self.context, state)

    # -- calls -------------------------------------------------------------------------
    def fit(
        self, x: Any = None, y: Any = None, *, batch_size: int | None = None, epochs: int = 1,
        steps_per_epoch: int | None = None, validation_data: Any = None, validation_split: float = 0.0,
        validation_steps: int | None = None, validation_freq: int | list[int] = 1, shuffle: bool = True,
        drop_remainder: bool = False, class_weight: dict[int, float] | None = None,
        sample_weight: Any = None, initial_epoch: int = 0, max_steps: int | None = None,
        callbacks: Any = None, verbose: Any = "auto", resume: bool = False,
    ) -> Any:
        """Train for ``epochs`` epochs; return the History (per-epoch logs).

        Args:
          x, y: arrays (``fit(x, y)``), a ``(x, y[, w])`` tuple, a dict batch of arrays, or a
            dataset (any iterable of batches, grain MapDataset / IterDataset / DataLoader).
          batch_size: examples per batch for arrays (default 32).
          epochs: the epoch index to stop before (with ``initial_epoch``, as in Keras).
          steps_per_epoch: batches per epoch; required for one-shot iterators when epochs > 1.
          validation_data: ``(x, y[, w])`` arrays or a dataset evaluated after epochs.
          validation_split: the fraction of array data (from the end) held out for validation.
          validation_steps, validation_freq: how much and how often to validate.
          shuffle: reshuffle array data each epoch (a pure function of ``(seed, epoch)``).
          drop_remainder: skip the partial last batch of array data.
          class_weight, sample_weight: weights of the per-example losses.
          initial_epoch: the first epoch's index.
          max_steps: stop after this many optimizer steps in total.
          callbacks: more callbacks for this call.
          verbose: 0 silent, 1 progress bar, 2 one line per epoch ("auto" is 1).
          resume: continue from the newest checkpoint of a ``ModelCheckpoint`` in the callbacks
            (an empty directory starts fresh and says so). A ``BackupAndRestore`` backup is
            restored whenever one exists, with or without ``resume``.
        """
        verbose, bs = args.verbosity(verbose), args.batch_size(batch_size)
        args.fit_counts(epochs, steps_per_epoch, initial_epoch, max_steps, validation_steps, validation_freq)
        src = self._runtime.fit_sources(
            datalib.from_user(x, y, sample_weight, class_weight, keys=self._setup.keys), bs,
            validation_split=validation_split, validation_data=validation_data, epochs=epochs,
            initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
            validation_freq=validation_freq, drop_remainder=drop_remainder,
        )
        plan, val = src.plan, src.val
        self._last_batch = plan.first_batch()
        with self._call(True, self._last_batch, verbose) as session:
            src.check_labels()
            cbs = self._callback_list(callbacks, verbose, "fit")
            cbs.set_params({"epochs": epochs, "steps": plan.steps, "verbose": verbose})
            hooks = Hooks(cbs, session, self._setup.log_order(), copy=self.donate, model=self._model, stop=self._progress.request_stop)
            plan.with_logs = hooks.wants_logs("train")
            self._running, self._fit_data = cbs, plan.data
            self._progress.start(initial_epoch)
            try:
                self._checkpoints.resume(cbs, resume)
                with self._interruptible(), hooks.on_exception():
                    hooks.call("on_train_begin", None)
                    loop = self._runtime.loop(session, hooks)
                    epoch_logs = self._runtime.epoch_logs(loop, val, bs, validation_steps, validation_freq, cbs)
                    logs = loop.fit(plan, epochs, shuffle, max_steps, epoch_logs)
                    hooks.call("on_train_end", logs)
            finally:
                self._running, self._fit_data = None, None
        return self.history

    def evaluate(
        self, x: Any = None, y: Any = None, *, batch_size: int | None = None, steps: int | None = None,
        sample_weight: Any = None, callbacks: Any = None, verbose: Any = "auto", return_dict: bool = True,
    ) -> Any:
        """Loss and metrics over the data in eval mode; returns ``{"loss": ..., ...}``.

        With ``return_dict=False`` (Keras's default; here the dict is) it returns Keras's form:
        the values in log order (loss first), or the loss alone when there is nothing else.

        The partial last batch is padded and masked: the result is exact and no new shape is
        compiled (unless the loss is a scalar-returning callable or ``compute_loss`` is
        overridden; then it runs at its true size).
        """
        verbose, bs = args.verbosity(verbose), args.batch_size(batch_size)
        steps = args.optional_count("evaluate(steps=...)", steps)
        self._placement.check_batch_size(bs)
        unplaced = datalib.from_user(x, y, sample_weight, keys=self._setup.keys)
        self._setup.streamed_labels = isinstance(unplaced, IterData)
        data = self._placement.data(unplaced, bs)
        self._last_batch = BatchPlan(data, "eval", bs, steps=steps, pad=True).first_batch()
        with self._call(False, self._last_batch, verbose) as session:
            args.check_labels(unplaced, self._setup.loss.classes, self._setup.keys)
            cbs = self._callback_list(callbacks, verbose, "evaluate")
            cbs.set_params({"epochs": 1, "steps": steps_of(data, bs, steps), "verbose": verbose})
            hooks = Hooks(cbs, session, self._setup.log_order(), copy=False)
            with self._interruptible():
                results = self._runtime.evaluate(self._runtime.loop(session, hooks), data, bs, steps, in_fit=False)
        if return_dict:
            return results
        values = list(results.values())
        return values[0] if len(values) == 1 else values

    def predict(
        self, x: Any, *, batch_size: int | None = None, steps: int | None = None, callbacks: Any = None,
        verbose: Any = "auto",
    ) -> Any:
        """The model's outputs in eval mode, one row per input example (numpy, stacked).

        Array inputs are batched and the partial last batch is padded (no new compile); the
        padding is cut from the result. Pytrees of outputs are stacked leaf by leaf.
        """
        verbose, bs = args.verbosity(verbose), args.batch_size(batch_size)
        self._placement.check_batch_size(bs)
        data = self._placement.data(args.predict_source(x, self._setup.keys), bs)
        with self._call(False) as session:
            cbs = self._callback_list(callbacks, verbose, "predict")
            cbs.set_params({"epochs": 1, "steps": steps_of(data, bs, steps), "verbose": verbose})
            hooks = Hooks(cbs, session, self._setup.log_order(), copy=False)
            plan = self._runtime.plan(data, "predict", bs, steps=steps, pad=True)
            if isinstance(data, ArrayData):
                self._last_batch = plan.first_batch()
            with self._interruptible():
                hooks.call("on_predict_begin", None)
                result = stitch_outputs(self._runtime.loop(session, hooks).predict(plan), self._placement.fetch)
                hooks.call("on_predict_end", None)
                return result

    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None) -> dict[str, float]:
        """One optimizer step on one batch; returns that batch's logs."""
        logs = self._one_batch("train", args.single_batch(x, y, sample_weight, self._setup.keys, True))
        self.step += 1
        return logs

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None) -> dict[str, float]:
        """Loss and metrics of one batch in eval mode."""
        return self._one_batch("eval", args.single_batch(x, y, sample_weight, self._setup.keys, True))

    def predict_on_batch(self, x: Any) -> Any:
        """The model's outputs for one batch of inputs, in eval mode (numpy)."""
        return self._one_batch("predict", (batchlib.normalize_batch(x),))

    def _one_batch(self, kind: str, batch: Any) -> Any:
        self._setup.streamed_labels = True  # no host check of single batches: the device checks
        with self._call(kind == "train", batch if kind != "predict" else None, 0) as session:
            return self._runtime.one_batch(session, kind, batch)

    def batch_logs(self) -> dict[str, float]:
        """The running logs of the call in progress, fetched from the device (a host sync)."""
        session = self._runtime.session
        if session is None or not session.state.metrics:
            return {}
        return self._runtime.logs(session)

    # -- parts of a call ---------------------------------------------------------------
    def _call(self, training: bool, first_batch: Any = None, verbose: int = 0) -> Any:
        custom = type(self).compute_loss is not Trainer.compute_loss
        return self._runtime.open(training, first_batch, verbose, custom_loss=custom)

    def _callback_list(self, extra: Any, verbose: int, mode: str) -> CallbackList:
        if mode == "fit":
            self.history = History()
        return callback_list([*self._callbacks, *(extra or [])], verbose, self, self.history if mode == "fit" else None)

    def _interruptible(self) -> Any:
        # a call nested in a fit's callback keeps the fit's flag
        return interrupt_progress(self._progress, reset=self._running is None)

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """A pytree (arrays and Python values) of everything needed to resume exactly (see
        ``checkpointing.collect`` for its keys); during ``fit`` it also holds the running
        metrics of the epoch in progress and, for sources whose iterators have ``get_state()``
        (grain's), the iterator's state after the last trained batch."""
        return self._checkpoints.collect()

    def load_checkpoint_state(self, tree: Mapping[str, Any]) -> None:
        """Restore what ``checkpoint_state`` returned (works inside ``on_train_begin``).

        ``model`` and ``optimizer`` are required; the other keys are restored when present.
        Everything is checked before anything changes: a model whose Variables differ from the
        checkpoint's (another architecture) raises a ValueError naming the paths and shapes.
        """
        self._checkpoints.load(tree)

    def checkpoint_shardings(self) -> Any:
        """``shardings(path, shape)`` for reading a checkpoint straight onto the mesh (each
        model array into its Variable's shards, the optimizer state into the live one's), or
        None on one device."""
        return self._checkpoints.shardings()

    def save(self, directory: str | os.PathLike) -> int:
        """Write the Trainer's state to ``directory`` with orbax, and wait until it is written.

        Everything in ``checkpoint_state()`` is saved; ``directory`` keeps one checkpoint, a
        subdirectory named after the step, which replaces an earlier one there once it is
        complete. Returns the step.
        """
        return self._checkpoints.save(directory)

    def restore(self, directory: str | os.PathLike, step: int | None = None) -> int:
        """Load the model and optimizer state and the step from ``directory``; returns the step.

        Reads the newest readable checkpoint (or ``step``) of a directory written by ``save``,
        ``ModelCheckpoint`` or ``BackupAndRestore``. A model of another architecture raises a
        ValueError naming the paths and shapes that differ; an empty directory raises
        FileNotFoundError.
        """
        return self._checkpoints.restore(directory, step)

    # -- summary -----------------------------------------------------------------------
    def summary(self, *example_inputs: Any) -> None:
        """Print the per-layer table of ``nnx.tabulate`` for ``example_inputs`` (by default
        the inputs of the first batch seen; parameters only before any)."""
        print(summary_text(self._model, example_inputs, self._last_batch, self._setup.keys))
