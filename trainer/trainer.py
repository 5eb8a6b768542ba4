"""Trainer: Keras-style ``fit`` / ``evaluate`` / ``predict`` over an nnx Module and optax.

The loop logic (epochs, callbacks, logs) lives here; the compiled steps are pure functions of a
``TrainState`` (see ``steps.py``) built from the overridable ``compute_loss``, ``train_step``,
``eval_step`` and ``predict_step``. The loops themselves are in ``loops.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx
from callbacks.base import Callback, CallbackList, callback_states, load_callback_states
from callbacks.history import History
from callbacks.progress import ProgressBar
from callbacks.store import CheckpointStore
from trainer import data as datalib
from trainer import losses as losslib
from trainer import lr as lrlib
from trainer import metrics as metriclib
from trainer import steps as steplib
from trainer.loops import Loops
from trainer.steps import TrainState


def _overridden(obj: Any, name: str) -> bool:
    return getattr(type(obj), name) is not getattr(Trainer, name)


def _unwrap(tree: Any) -> Any:
    return jax.tree.map(
        lambda v: v.get_value() if isinstance(v, nnx.Variable) else v,
        tree,
        is_leaf=lambda v: isinstance(v, nnx.Variable),
    )


class Trainer(Loops):
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
      steps_per_execution: steps fused into one compiled call with ``lax.scan``.
      wrt: a filter choosing the Variables to train; the rest are frozen.
      donate: donate the state buffers to each step (the Trainer owns copies).
      input_keys, target_key, weight_key: the parts of dict batches.

    Example::

      >>> trainer = Trainer(model, optax.adam(1e-3), metrics=("accuracy",))
      >>> history = trainer.fit(x, y, epochs=5, validation_split=0.2)
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        loss: Any = None,
        metrics: Any = None,
        callbacks: Any = None,
        seed: int = 0,
        steps_per_execution: int = 1,
        wrt: Any = nnx.Param,
        donate: bool = True,
        input_keys: Any = "x",
        target_key: str = "y",
        weight_key: str = "sample_weight",
    ):
        if not isinstance(model, nnx.Module):
            raise TypeError(f"Trainer(model=...) expects an nnx.Module, got {type(model).__name__}.")
        self._nnx_optimizer = None
        if hasattr(optimizer, "tx") and hasattr(optimizer, "model") and not hasattr(optimizer, "init"):
            if optimizer.model is not model:
                raise ValueError(
                    f"Trainer(optimizer=...): the nnx.Optimizer was created for another model "
                    f"({type(optimizer.model).__name__} at {id(optimizer.model):#x}), not this "
                    f"{type(model).__name__} at {id(model):#x}. Pass nnx.Optimizer(model, tx) "
                    "for this model, or the optax transformation itself."
                )
            self._nnx_optimizer = optimizer
            wrt = getattr(optimizer, "wrt", wrt)
            tx = optimizer.tx
        elif hasattr(optimizer, "init") and hasattr(optimizer, "update"):
            tx = optimizer
        else:
            raise TypeError(
                f"Trainer(optimizer=...) expects an optax GradientTransformation or an "
                f"nnx.Optimizer, got {type(optimizer).__name__}."
            )
        if int(steps_per_execution) < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}.")
        self._model = model
        self._user_optimizer = optimizer
        self._tx = tx
        self._wrt = wrt
        self.seed = int(seed)
        self.steps_per_execution = int(steps_per_execution)
        self.donate = bool(donate)
        self._keys = datalib.BatchKeys(input_keys, target_key, weight_key)
        self._loss_arg = loss
        self._loss_name: str | None = None
        self._loss_fn: Callable[..., jax.Array] | None = None
        self._maskable = True
        if loss is not None:
            self._loss_name, self._loss_fn = losslib.get_loss(loss)
        self._metric_specs = metriclib.resolve_metrics(metrics)
        self._aux_keys: tuple[str, ...] | None = None
        self._callbacks = list(callbacks or [])
        self._running: CallbackList | None = None  # the callbacks of the fit in progress
        self._fit_data: Any = None  # the training source of the fit in progress
        self._full_tx: optax.GradientTransformation | None = None
        self._opt_state: Any = None
        self._opt_params_def: Any = None
        self._jits: dict[Any, Any] = {}
        self._ctx: tuple[Any, bool] | None = None
        self._spec: steplib.ModelSpec | None = None
        self._prepared: Any = None  # what _prepare last checked
        self._state: TrainState | None = None
        self._written: list[Any] = []
        self._saved_mode: list[Any] = []
        self._last_batch: Any = None
        self._interrupted = False
        self.history: History | None = None
        self.stop_training = False
        self.step = 0
        self.epoch = 0
        self._batch_in_epoch = 0
        self._epoch_complete = False

    # -- public attributes -------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The seed of the per-epoch shuffle; setting it resets the shuffle key."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)
        # the shuffle of epoch e uses fold_in(key, e); checkpoints save and restore this key
        self._shuffle_key = jax.random.key(self._seed)

    @property
    def callbacks(self) -> list[Callback]:
        """The callbacks of the ``fit`` in progress, in the order they are called (History
        first, the ProgressBar and the checkpointing callbacks last); outside ``fit``, the
        callbacks given to the Trainer. Checkpoints save and restore their ``state_dict``."""
        if self._running is not None:
            return list(self._running)
        return list(self._callbacks)

    @property
    def interrupted(self) -> bool:
        """Whether the last ``fit`` / ``evaluate`` / ``predict`` was stopped by Ctrl-C."""
        return self._interrupted

    @property
    def model(self) -> Any:
        """The user's model object, current whenever a callback runs and after every call."""
        if self._state is not None:
            self._sync()
        return self._model

    @property
    def optimizer(self) -> Any:
        """The optimizer given to the Trainer (an optax transformation or ``nnx.Optimizer``)."""
        return self._user_optimizer

    @property
    def learning_rate(self) -> float | None:
        """The ``learning_rate`` of an ``inject_hyperparams`` optimizer; None for others."""
        hyper = lrlib.find_hyperparams(self._live_opt_state())
        return None if hyper is None else float(hyper["learning_rate"])

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._replace_opt_state(lrlib.replace_learning_rate(self._live_opt_state(), value))

    @property
    def lr_scale(self) -> float:
        """The multiplier chained after the optimizer (1.0 unless changed); see ``lr.py``."""
        node = lrlib.find_lr_scale(self._live_opt_state())
        return 1.0 if node is None else float(node.scale)

    @lr_scale.setter
    def lr_scale(self, value: float) -> None:
        opt_state = self._live_opt_state()
        if lrlib.find_lr_scale(opt_state) is None:
            raise AttributeError(
                "This optimizer was built with optax.inject_hyperparams; set "
                "trainer.learning_rate instead of trainer.lr_scale."
            )
        self._replace_opt_state(lrlib.replace_lr_scale(opt_state, value))

    def _replace_opt_state(self, new: Any) -> None:
        """Use ``new`` as the optimizer state (in the live state too while a call runs)."""
        if self._state is not None and self._state.opt_state is not None:
            self._state = self._state._replace(opt_state=new)
        self._opt_state = new

    def _live_opt_state(self) -> Any:
        if self._state is not None and self._state.opt_state is not None:
            return self._state.opt_state
        if self._opt_state is None:
            spec, _, _ = steplib.split_model(self._model, self._wrt)
            self._ensure_optimizer(spec, steplib.initial_arrays(spec, copy=False)[0])
        return self._opt_state

    # -- overridable pure pieces ---------------------------------------------------------
    def call_model(self, model: Any, inputs: Any) -> Any:
        """Call ``model`` on ``inputs`` in the step's mode (passes ``train=``/``training=``)."""
        spec, training = self._context()
        return steplib.call_model(model, inputs, spec.train_kw, training)

    def compute_loss(self, model: Any, batch: Any) -> tuple[jax.Array, dict[str, Any]]:
        """The batch's loss and an aux dict (compiled; override for full control).

        The default calls the model on the batch's inputs and takes the weighted mean of the
        per-example loss. Scalar aux entries appear in the logs; ``aux['predictions']`` (when
        present) feeds the metrics.

        Args:
          model: the model, merged inside the trace in the step's mode.
          batch: the batch as given (tuple or dict).
        """
        inputs, targets, weights = datalib.batch_parts(batch, self._keys)
        predictions = self.call_model(model, inputs)
        per_example = self._loss_fn(predictions, targets)
        loss, _ = steplib.weighted_mean(per_example, weights)
        return loss, {"predictions": predictions, "per_example_loss": per_example}

    def train_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimization step (pure, compiled): loss, gradients, optax update, metrics."""
        spec, _ = self._context()

        def loss_of(params: Any) -> tuple[jax.Array, tuple[dict, tuple]]:
            model = steplib.merge(spec, params, state.others, training=True)
            loss, aux = self.compute_loss(model, batch)
            return loss, (aux, steplib.read_others(spec, model))

        (loss, (aux, others)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = self._full_tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state._replace(params=params, others=others, opt_state=opt_state)
        state = self.update_metrics(state, batch, loss, aux)
        return state, self.compute_logs(state)

    def eval_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """One evaluation step (pure, compiled): the loss and metrics in eval mode."""
        spec, _ = self._context()
        model = steplib.merge(spec, state.params, state.others, training=False)
        loss, aux = self.compute_loss(model, batch)
        state = self.update_metrics(state, batch, loss, aux)
        return state, self.compute_logs(state)

    def predict_step(self, state: TrainState, batch: Any) -> Any:
        """The model's outputs for one batch (pure, compiled, eval mode)."""
        spec, _ = self._context()
        model = steplib.merge(spec, state.params, state.others, training=False)
        return self.call_model(model, datalib.batch_parts(batch, self._keys)[0])

    def update_metrics(self, state: TrainState, batch: Any, loss: jax.Array, aux: dict) -> TrainState:
        """Add a batch to the running metrics and count a non-finite loss (pure)."""
        _, targets, weights = datalib.batch_parts(batch, self._keys)
        if weights is not None:
            weight_total = jnp.sum(jnp.asarray(weights, jnp.float32))
        else:
            weight_total = jnp.asarray(datalib.batch_size_of(batch), jnp.float32)
        metrics = metriclib.update_state(
            self._metric_specs,
            state.metrics,
            aux_keys=self._aux_keys or (),
            loss=loss,
            weight_total=weight_total,
            aux=aux,
            predictions=aux.get("predictions"),
            targets=targets,
            weights=weights,
            per_example_loss=aux.get("per_example_loss"),
        )
        c = state.counters
        bad = ~jnp.isfinite(loss)
        first = jnp.where(bad & (c[steplib.FIRST_NONFINITE] < 0), c[steplib.STEP], c[steplib.FIRST_NONFINITE])
        counters = jnp.stack(
            [c[steplib.STEP] + 1, c[steplib.POS], c[steplib.NONFINITE] + bad.astype(jnp.int32), first]
        )
        return state._replace(metrics=metrics, counters=counters)

    def compute_logs(self, state: TrainState) -> dict[str, jax.Array]:
        """The running values of loss and metrics (pure)."""
        logs = metriclib.results(self._metric_specs, state.metrics, self._aux_keys or ())
        logs["_nonfinite"] = state.counters[steplib.NONFINITE]
        logs["_first_nonfinite"] = state.counters[steplib.FIRST_NONFINITE]
        return logs

    def _context(self) -> tuple[steplib.ModelSpec, bool]:
        if self._ctx is None:
            raise RuntimeError("Trainer steps run only inside the Trainer's compiled calls.")
        return self._ctx

    @contextlib.contextmanager
    def _tracing(self, spec: steplib.ModelSpec, training: bool) -> Iterator[None]:
        previous, self._ctx = self._ctx, (spec, training)
        try:
            yield
        finally:
            self._ctx = previous

    def _in_context(self, fn: Callable[..., Any], spec: steplib.ModelSpec, training: bool) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            with self._tracing(spec, training):
                return fn(*args)

        return wrapped

    # -- preparation (before any compile) -----------------------------------------------
    def _begin(self, training: bool) -> None:
        """Split the model, copy its arrays, and switch the user's model to the call's mode."""
        spec, _, saved = steplib.split_model(self._model, self._wrt, self._spec)
        self._spec = spec
        self._saved_mode = saved
        params, others = steplib.initial_arrays(spec, copy=self.donate)
        opt_state = self._ensure_optimizer(spec, params) if training else None
        self._state = TrainState(params, others, opt_state, {}, steplib.new_counters(self.step))
        self._written = [v.get_value() if isinstance(v, nnx.Variable) else v for v in spec.variables]
        if training:
            self._model.train()
        else:
            self._model.eval()

    def _end(self) -> None:
        """Write the state back into the model and restore its previous mode."""
        if self._state is None:
            return
        if not any(getattr(a, "is_deleted", lambda: False)() for a in jax.tree.leaves(self._state.params)):
            self._sync()
        if self._state.opt_state is not None:
            self._opt_state = self._state.opt_state
            self._write_nnx_optimizer()
        self._state = None
        steplib.restore_mode(self._saved_mode)

    def _ensure_optimizer(self, spec: steplib.ModelSpec, params: Any) -> Any:
        params_def = jax.tree.structure(params), tuple(jnp.shape(p) for p in jax.tree.leaves(params))
        if self._opt_state is not None and params_def == self._opt_params_def:
            return self._opt_state
        base_state = self._tx.init(params)
        if self._nnx_optimizer is not None:
            # The nnx.Optimizer keeps its state with States where optax has dicts: same leaves
            # in the same order, so it carries over when the leaves' shapes agree.
            from_opt = jax.tree.leaves(_unwrap(self._nnx_optimizer.opt_state))
            base_leaves, base_def = jax.tree.flatten(base_state)
            if [jnp.shape(a) for a in from_opt] == [jnp.shape(b) for b in base_leaves]:
                base_state = jax.tree.unflatten(base_def, from_opt)
        if lrlib.find_hyperparams(base_state) is not None:
            self._full_tx, state = self._tx, base_state
        else:
            self._full_tx = optax.chain(self._tx, lrlib.scale_by_lr_scale())
            state = (base_state, lrlib.scale_by_lr_scale().init(params))
        # distinct buffers everywhere, so that donation never sees one buffer twice
        self._opt_state = jax.tree.map(lambda a: jnp.array(a, copy=True), state)
        self._opt_params_def = params_def
        return self._opt_state

    def _write_nnx_optimizer(self) -> None:
        opt = self._nnx_optimizer
        if opt is None or self._opt_state is None:
            return
        inner = self._opt_state if self._full_tx is self._tx else self._opt_state[0]
        targets, treedef = jax.tree.flatten(opt.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
        values, new_def = jax.tree.flatten(inner)
        if len(targets) == len(values):
            for var, value in zip(targets, values, strict=True):
                if isinstance(var, nnx.Variable):
                    var.set_value(value)
        opt.step.set_value(jnp.asarray(self.step, opt.step.get_value().dtype))

    def _prepare(self, batch: Any, training: bool, verbose: int) -> None:
        """Choose and check the loss on the first batch (shapes only: no compile)."""
        prepared = (self._spec.key, training, datalib.shapes_of(batch))
        if prepared == self._prepared:  # checked before: skip the shape tracing
            self._init_metrics()
            return
        self._check_batch(batch, training, verbose)
        self._prepared = prepared

    def _check_batch(self, batch: Any, training: bool, verbose: int) -> None:
        spec, state = self._spec, self._state
        inputs, targets, _ = datalib.batch_parts(batch, self._keys)
        if _overridden(self, "compute_loss"):
            self._maskable = False
            if self._aux_keys is None:
                self._aux_keys = self._trace_aux_keys(batch)
            self._init_metrics()
            return
        self._aux_keys = ()
        if inputs is None and isinstance(batch, dict):
            raise KeyError(
                f"The dict batches have no input key {self._keys.inputs!r} (they have "
                f"{sorted(batch)}); pass Trainer(input_keys=..., target_key=...)."
            )
        if targets is None and isinstance(batch, dict):
            raise ValueError(
                f"The dict batches have no target key {self._keys.target!r} (they have "
                f"{sorted(batch)}); pass Trainer(target_key=...) or override compute_loss."
            )
        if targets is None:
            raise ValueError(
                "The batches hold no targets: pass y, (x, y) batches, or dict batches with the "
                f"key {self._keys.target!r} (Trainer(target_key=...))."
            )

        def forward(params: Any, others: tuple, inputs: Any) -> Any:
            with self._tracing(spec, training):
                return self.call_model(steplib.merge(spec, params, others, training), inputs)

        predictions = jax.eval_shape(forward, state.params, state.others, inputs)
        if self._loss_fn is None:
            model_loss = getattr(self._model, "loss", None)
            if callable(model_loss) and not isinstance(model_loss, nnx.Module):
                self._loss_name, self._loss_fn = "model.loss", model_loss
            else:
                name = losslib.infer_loss(predictions, targets)
                self._loss_name, self._loss_fn = name, losslib.LOSSES[name]
                if verbose:
                    print(
                        f"Trainer: loss={name!r} ({losslib.describe(name)}), inferred from "
                        f"predictions {tuple(predictions.shape)} and targets "
                        f"{tuple(np.shape(targets))} {np.dtype(targets.dtype).name}; pass "
                        "loss=... to choose another."
                    )
        if self._loss_fn is losslib.LOSSES.get(self._loss_name):
            losslib.check_targets(self._loss_name, predictions, targets)
        target_spec = jax.ShapeDtypeStruct(np.shape(targets), targets.dtype)
        out = jax.eval_shape(self._loss_fn, predictions, target_spec)
        self._maskable = getattr(out, "ndim", 0) >= 1 and all(
            "mask" in _update_params(s) for s in self._metric_specs if s.graphdef is not None
        )
        self._init_metrics()

    def _trace_aux_keys(self, batch: Any) -> tuple[str, ...]:
        spec, state = self._spec, self._state

        def run(params: Any, others: tuple, batch: Any) -> Any:
            with self._tracing(spec, True):
                model = steplib.merge(spec, params, others, training=True)
                return self.compute_loss(model, batch)[1]

        aux = jax.eval_shape(run, state.params, state.others, batch)
        return tuple(sorted(k for k, v in aux.items() if getattr(v, "shape", None) == () and not k.startswith("_")))

    def _init_metrics(self) -> None:
        self._state = self._state._replace(metrics=self._fresh_metrics())

    def _fresh_metrics(self) -> dict[str, Any]:
        state = metriclib.init_state(self._metric_specs, self._aux_keys or ())
        leaves, treedef = jax.tree.flatten(state)
        return jax.tree.unflatten(treedef, steplib.copy_arrays(leaves))

    # -- keeping the user's model current ---------------------------------------------
    def _sync(self) -> None:
        """Write the live state into the user's Variables (skipped when already there)."""
        spec, state = self._spec, self._state
        if state is None:
            return
        steplib.write_back(spec, state.params, state.others)
        self._written = [v.get_value() if isinstance(v, nnx.Variable) else v for v in spec.variables]

    def _pull_changes(self) -> None:
        """Take back values that a callback wrote into the model (e.g. restored weights)."""
        spec, state = self._spec, self._state
        if state is None:
            return
        changed = [
            i for i, v in enumerate(spec.variables)
            if isinstance(v, nnx.Variable) and v.get_value() is not self._written[i]
        ]
        if not changed:
            return
        params, others = steplib.initial_arrays(spec, copy=self.donate)
        self._state = state._replace(params=params, others=others)
        self._written = [v.get_value() if isinstance(v, nnx.Variable) else v for v in spec.variables]

    # -- compiled functions ------------------------------------------------------------
    def _compiled(self, kind: str, treedef: Any = None, **options: Any) -> Any:
        """The jitted step ``kind``; train, eval and predict take the flat leaves of a state
        with structure ``treedef`` (and return them, but predict)."""
        spec = self._spec
        key = (kind, spec.key, treedef, self._loss_name, self._maskable, tuple(sorted(options.items())))
        fn = self._jits.get(key)
        if fn is not None:
            return fn
        if kind == "train":
            pure = steplib.make_train_fn(self._in_context(self.train_step, spec, True), keys=self._keys, **options)
            fn = jax.jit(steplib.on_flat_state(pure, treedef), donate_argnums=(0,) if self.donate else ())
        elif kind == "eval":
            pure = steplib.make_eval_fn(self._in_context(self.eval_step, spec, False), keys=self._keys, **options)
            fn = jax.jit(steplib.on_flat_state(pure, treedef))  # params are the live ones
        elif kind == "predict":
            pure = steplib.make_predict_fn(self._in_context(self.predict_step, spec, False), keys=self._keys, **options)
            fn = jax.jit(steplib.on_flat_state(pure, treedef, returns_state=False))
        elif kind == "logs":
            fn = jax.jit(lambda metrics, counters: self.compute_logs(TrainState(None, (), None, metrics, counters)))
        else:  # pragma: no cover - internal
            raise ValueError(kind)
        self._jits[key] = fn
        return fn

    # -- callbacks ----------------------------------------------------------------------
    def _callback_list(self, extra: Any, verbose: int, mode: str) -> tuple[CallbackList, bool]:
        cbs = [*self._callbacks, *(extra or [])]
        if mode == "fit":
            self.history = History()
            cbs.insert(0, self.history)
            # checkpoints are written after the other callbacks have updated their state
            saving = [c for c in cbs if getattr(c, "saves_checkpoints", False)]
            cbs = [c for c in cbs if not getattr(c, "saves_checkpoints", False)] + saving
        if verbose and not any(isinstance(c, ProgressBar) for c in cbs):
            cbs.append(ProgressBar(verbose=verbose))
        if not verbose:
            cbs = [c for c in cbs if not isinstance(c, ProgressBar)]
        for c in cbs:
            if not isinstance(c, Callback):
                raise TypeError(f"callbacks must be callbacks.Callback instances, got {type(c).__name__}.")
        return CallbackList(cbs, trainer=self), True

    @staticmethod
    def _needs_logs(cbs: CallbackList, mode: str) -> bool:
        hooks = (f"on_{mode}_batch_begin", f"on_{mode}_batch_end")
        return any(c.overrides(h) and not getattr(c, "pulls_batch_logs", False) for c in cbs for h in hooks)

    def batch_logs(self) -> dict[str, float]:
        """The running logs of the call in progress, fetched from the device (a host sync)."""
        if self._state is None or not self._state.metrics:
            return {}
        fn = self._compiled("logs")
        return self._host_logs(fn(self._state.metrics, self._state.counters))

    def _host_logs(self, logs: dict[str, Any], index: int | None = None) -> dict[str, float]:
        values = jax.device_get(logs)
        out: dict[str, float] = {}
        order = ["loss", *(s.name for s in self._metric_specs)]
        for k, v in sorted(values.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
            v = np.asarray(v)
            if index is not None:
                v = v[index]
            if k == "_nonfinite":
                if int(v) > 0:
                    out["nonfinite_steps"] = float(v)
                    first = np.asarray(values["_first_nonfinite"])
                    out["first_nonfinite_step"] = float(first if index is None else first[index])
                continue
            if k == "_first_nonfinite":
                continue
            out[k] = float(v)
        return out

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """A pytree (arrays and Python values) of everything needed to resume exactly.

        Keys: ``model`` (pure nested dict of the model's State, sown intermediates left out:
        parameters, batch statistics, and the Rngs' keys, as key data, and counters), ``optimizer``
        (the optax state's leaves keyed ``'0'``, ``'1'``...; the injected learning rate and
        ``lr_scale`` are among them), ``step``, ``epoch`` and ``batch`` (the next batch to run),
        ``rng`` (the data of the key the epochs' shuffle orders derive from), ``callbacks`` (the
        ``state_dict()`` of each of ``self.callbacks``), and during ``fit``: ``metrics`` (the
        running sums of the epoch in progress) and ``data`` (the data iterator's state after
        the last trained batch, for sources whose iterators have ``get_state()``, as grain's).
        """
        model = self.model  # synced
        opt_state = self._live_opt_state()
        leaves = [jnp.array(x, copy=True) for x in jax.tree.leaves(opt_state)]
        epoch, batch = (self.epoch + 1, 0) if self._epoch_complete else (self.epoch, self._batch_in_epoch)
        tree: dict[str, Any] = {
            "model": jax.tree.map(_plain_copy, nnx.state(model, _CHECKPOINTED).to_pure_dict()),
            "optimizer": {str(i): v for i, v in enumerate(leaves)},
            "step": int(self.step),
            "epoch": int(epoch),
            "batch": int(batch),
            "rng": np.asarray(jax.random.key_data(self._shuffle_key)),
            "callbacks": callback_states(self.callbacks),
        }
        if self._state is not None and self._state.metrics and not self._epoch_complete:
            tree["metrics"] = {
                str(i): jnp.array(x, copy=True) for i, x in enumerate(jax.tree.leaves(self._state.metrics))
            }
        data = self._fit_data
        # a re-iterable source starts a new iterator after a complete epoch: no position to keep
        if isinstance(data, datalib.IterData) and (data.one_shot or not self._epoch_complete):
            position = data.position_state()
            if position is not None:
                tree["data"] = datalib.encode_iterator_state(position)
        return tree

    def load_checkpoint_state(self, tree: Mapping[str, Any]) -> None:
        """Restore what ``checkpoint_state`` returned (works inside ``on_train_begin``).

        ``model`` and ``optimizer`` are required; the other keys are restored when present.
        Everything is checked before anything changes: a model whose Variables differ from the
        checkpoint's (another architecture) raises a ValueError naming the paths and shapes.
        """
        model_values = self._checked_model_values(tree["model"])
        new_opt = self._checked_opt_state(tree["optimizer"])
        metrics = None
        if self._state is not None and self._state.metrics and "metrics" in tree:
            metrics = _checked_leaves("metrics", self._state.metrics, tree["metrics"])
        for var, value in model_values:
            var.set_value(value)
        self._opt_state = new_opt
        if "step" in tree:
            self.step = int(tree["step"])
        if "epoch" in tree:
            self.epoch = int(tree["epoch"])
        self._batch_in_epoch = int(tree.get("batch", 0))
        self._epoch_complete = False
        if "rng" in tree:
            data = jnp.asarray(np.asarray(tree["rng"]), jnp.uint32)
            self._shuffle_key = jax.random.wrap_key_data(data, impl=jax.random.key_impl(self._shuffle_key))
        if "callbacks" in tree:
            load_callback_states(self.callbacks, tree["callbacks"])
        if "data" in tree and isinstance(self._fit_data, datalib.IterData):
            self._fit_data.restore_position(datalib.decode_iterator_state(tree["data"]))
        if self._state is None:
            self._write_nnx_optimizer()
            return
        params, others = steplib.initial_arrays(self._spec, copy=self.donate)
        self._state = TrainState(
            params, others,
            new_opt if self._state.opt_state is not None else None,
            metrics if metrics is not None else self._state.metrics,
            steplib.new_counters(self.step, self._batch_in_epoch),
        )
        self._written = [v.get_value() if isinstance(v, nnx.Variable) else v for v in self._spec.variables]

    def _checked_model_values(self, saved: Mapping[str, Any]) -> list[tuple[Any, jax.Array]]:
        """``(Variable, new value)`` for every Variable of the model, or a ValueError naming
        each path that is missing on one side or has another shape."""
        flat = {"/".join(map(str, p)): v for p, v in nnx.State.flatten_mapping(saved).items()}
        out, mismatched, missing = [], [], []
        for path, var in nnx.state(self._model, _CHECKPOINTED).flat_state():
            key = "/".join(map(str, path))
            old = var.get_value()
            if key not in flat:
                missing.append(f"'{key}' {tuple(jnp.shape(old))}")
                continue
            value = flat.pop(key)
            if _is_key(old) and not _is_key(value):
                value = jax.random.wrap_key_data(jnp.asarray(value), impl=jax.random.key_impl(old))
            value = jnp.array(value, copy=True)
            if value.shape != jnp.shape(old):
                mismatched.append(
                    f"'{key}' has shape {value.shape} in the checkpoint but {jnp.shape(old)} in the model"
                )
                continue
            out.append((var, value))
        extra = [f"'{k}' {tuple(np.shape(v))}" for k, v in flat.items()]
        if mismatched or missing or extra:
            parts = mismatched[:5]
            if missing:
                parts.append(f"the checkpoint lacks {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
            if extra:
                parts.append(f"the model lacks {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
            raise ValueError(
                f"load_checkpoint_state: the checkpoint does not fit this {type(self._model).__name__} "
                f"(another architecture?): {'; '.join(parts)}."
            )
        return out

    def _checked_opt_state(self, saved: Any) -> Any:
        """The optimizer state rebuilt from the saved leaves, checked against this optimizer's."""
        return _checked_leaves("optimizer", self._live_opt_state(), saved)

    def save(self, directory: str | os.PathLike) -> int:
        """Write the Trainer's state to ``directory`` with orbax, and wait until it is written.

        Everything in ``checkpoint_state()`` is saved (model and optimizer state, step, ...);
        ``directory`` keeps one checkpoint, a subdirectory named after the step, which replaces
        an earlier one there once it is complete. Returns the step.
        """
        store = CheckpointStore(directory, max_to_keep=1, owner="Trainer.save")
        try:
            store.save(int(self.step), self.checkpoint_state())
        finally:
            store.close()
        return int(self.step)

    def restore(self, directory: str | os.PathLike, step: int | None = None) -> int:
        """Load the model and optimizer state and the step from ``directory``; returns the step.

        Reads the newest readable checkpoint (or ``step``) of a directory written by ``save``,
        ``ModelCheckpoint`` or ``BackupAndRestore``. A model of another architecture raises a
        ValueError naming the paths and shapes that differ; an empty directory raises
        FileNotFoundError.
        """
        store = CheckpointStore(directory, owner="Trainer.restore")
        try:
            found = store.load(step)
        finally:
            store.close()
        if found is None:
            raise FileNotFoundError(f"Trainer.restore: no checkpoint in {store.directory}.")
        tree = found[1]
        self.load_checkpoint_state({k: tree[k] for k in ("model", "optimizer", "step")})
        return int(tree["step"])

    # -- summary ----------------------------------------------------------------------
    def summary(self, *example_inputs: Any) -> None:
        """Print the per-layer table of ``nnx.tabulate`` (or parameter counts without it).

        Without inputs it uses the first batch seen, or lists parameters only before any.
        """
        inputs = example_inputs
        if not inputs and self._last_batch is not None:
            first = datalib.batch_parts(self._last_batch, self._keys)[0]
            inputs = first if isinstance(first, tuple) else (first,)
        tabulate = getattr(nnx, "tabulate", None)
        if tabulate is not None:
            print(tabulate(self._model, *inputs))
            return
        total = 0
        lines = [f"{type(self._model).__name__}"]
        for path, var in nnx.state(self._model).flat_state():
            value = var.get_value() if isinstance(var, nnx.Variable) else var
            size = int(np.prod(np.shape(value)))
            if isinstance(var, nnx.Param):
                total += size
            lines.append(f"  {'/'.join(map(str, path)):<40} {type(var).__name__:<12} {tuple(np.shape(value))}")
        lines.append(f"Total parameters: {total:,}")
        print("\n".join(lines))

    # -- interrupts --------------------------------------------------------------------
    @contextlib.contextmanager
    def _catch_interrupt(self) -> Iterator[None]:
        """Turn the first SIGINT into a request to stop after the current step."""
        self._interrupted = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is not signal.default_int_handler:
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self._interrupted = True
            self.stop_training = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            if self._interrupted:
                print(
                    f"Trainer: interrupted; stopped after step {self.step} (epoch {self.epoch}). "
                    "The model holds the last completed step.",
                    file=sys.stderr,
                )


# What checkpoints hold of a model: every Variable but sown intermediates (dropped by each step).
_CHECKPOINTED = nnx.Not(nnx.Intermediate)


def _checked_leaves(what: str, current: Any, saved: Any) -> Any:
    """``current``'s structure with the leaves of ``saved`` (a dict keyed by leaf index, or a
    pytree), cast to the current dtypes; a ValueError names any leaf whose shape differs."""
    if isinstance(saved, Mapping):
        values = [saved[k] for k in sorted(saved, key=int)]
    else:
        values = jax.tree.leaves(saved)
    paths, treedef = jax.tree_util.tree_flatten_with_path(current)
    if len(values) != len(paths):
        raise ValueError(
            f"load_checkpoint_state: the {what} state has {len(paths)} arrays, the checkpoint "
            f"{len(values)}; was it saved with the same optimizer, metrics and model?"
        )
    out = []
    for (path, old), value in zip(paths, values, strict=True):
        if np.shape(value) != np.shape(old):
            raise ValueError(
                f"load_checkpoint_state: the {what} state's {jax.tree_util.keystr(path)} has shape "
                f"{np.shape(value)} in the checkpoint but {np.shape(old)} here."
            )
        out.append(jnp.array(value, dtype=old.dtype, copy=True))
    return jax.tree.unflatten(treedef, out)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _plain_copy(x: Any) -> Any:
    """A copy of an array; typed PRNG keys become their raw ``uint32`` key data."""
    if _is_key(x):
        return jax.random.key_data(x)
    return jnp.array(x, copy=True)


def _update_params(spec: metriclib.MetricSpec) -> set[str]:
    import inspect

    metric = nnx.unflatten(spec.graphdef, list(spec.initial))
    try:
        params = inspect.signature(metric.update).parameters
    except (TypeError, ValueError):
        return set()
    return set(params)
