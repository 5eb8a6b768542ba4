"""The host loops of the Trainer: epochs, batches, callbacks and logs around the compiled steps.

``Loops`` is the base class of ``Trainer``; it holds ``fit``, ``evaluate``, ``predict`` and the
single-batch methods. The host reads numbers from the device only where a log is needed: at
epoch ends, and per batch only when a callback (other than the progress bar, which pulls its
numbers when it redraws) defines a batch hook.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer import data as datalib
from trainer import steps as steplib
from trainer.data import ArrayData, IterData
from trainer.steps import Gather, TrainState


def _verbose(verbose: Any) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2, False, True):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}.")
    return int(verbose)


def _batch_size(batch_size: int | None) -> int:
    if batch_size is None:
        return 32
    if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


def _prefetch(batches: Iterator[Any], depth: int = 2, put: Callable[[Any], Any] = jax.device_put) -> Iterator[Any]:
    """Move batches to the device ``depth`` ahead of use, so transfer overlaps compute."""
    queue: collections.deque[Any] = collections.deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) >= depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _groups(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last one may be shorter)."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class _Plan:
    """How one pass over a source runs: batch size, step counts, the first batch."""

    def __init__(self, data: ArrayData | IterData, bs: int, steps: int | None, drop: bool, *, pad: bool):
        self.data, self.bs = data, bs
        if isinstance(data, ArrayData):
            full, rem = divmod(data.n, bs)
            if drop or pad:
                rem = 0 if drop else rem
            if full == 0 and rem == 0:
                raise ValueError(
                    f"drop_remainder=True with batch_size={bs} leaves no batch from "
                    f"{data.n} examples."
                )
            self.full, self.rem = full, rem
            total = full + (1 if rem else 0)
            self.steps: int | None = total if steps is None else min(steps, total)
            self.first = steplib.first_rows(data.batch, min(bs, data.n))
        else:
            self.full, self.rem = 0, 0
            self.steps = steps if steps is not None else data.length
            self.first = data.peek()


class Loops:
    """fit / evaluate / predict loops (mixed into ``Trainer``)."""

    # -- the live state ------------------------------------------------------------------
    # The compiled steps take and return the state's flat leaves: flattening and rebuilding the
    # nested TrainState on every call costs as much as a small model's step. The tree is
    # rebuilt only when something reads ``_state`` (a hook, the end of an epoch).
    _state_tree: TrainState | None = None
    _state_leaves: list[Any] | None = None
    _state_def: Any = None

    @property
    def _state(self) -> TrainState | None:
        if self._state_tree is None and self._state_leaves is not None:
            self._state_tree = jax.tree.unflatten(self._state_def, self._state_leaves)
        return self._state_tree

    @_state.setter
    def _state(self, state: TrainState | None) -> None:
        self._state_tree, self._state_leaves = state, None

    def _flat_state(self) -> tuple[list[Any], Any]:
        """The live state's leaves and treedef."""
        if self._state_leaves is None:
            self._state_leaves, self._state_def = jax.tree.flatten(self._state_tree)
        return self._state_leaves, self._state_def

    def _set_flat_state(self, leaves: list[Any]) -> None:
        """Replace the live state by leaves of the same structure."""
        self._state_leaves, self._state_tree = leaves, None

    def _outer_call(self) -> tuple | None:
        """What a call in progress (a ``fit`` whose callback evaluates or predicts) needs back
        after the nested call; None when no call is in progress."""
        if self._state_tree is None and self._state_leaves is None:
            return None
        return (self._state_tree, self._state_leaves, self._state_def, self._spec, self._saved_mode, self._written)

    def _resume_outer(self, outer: tuple | None) -> None:
        if outer is not None:
            self._state_tree, self._state_leaves, self._state_def, self._spec, self._saved_mode, self._written = outer

    # -- fit ---------------------------------------------------------------------------
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        *,
        batch_size: int | None = None,
        epochs: int = 1,
        steps_per_epoch: int | None = None,
        validation_data: Any = None,
        validation_split: float = 0.0,
        validation_steps: int | None = None,
        validation_freq: int | list[int] = 1,
        shuffle: bool = True,
        drop_remainder: bool = False,
        class_weight: dict[int, float] | None = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        max_steps: int | None = None,
        callbacks: Any = None,
        verbose: Any = "auto",
        resume: bool = False,
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
        verbose = _verbose(verbose)
        bs = _batch_size(batch_size)
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}.")
        if steps_per_epoch is not None and steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch}.")
        data = datalib.from_user(x, y, sample_weight, class_weight, keys=self._keys)
        val = None
        if validation_split:
            data, val = datalib.split_tail(data, validation_split)
        if validation_data is not None:
            val = self._validation_source(validation_data)
        if isinstance(data, IterData) and steps_per_epoch is None and epochs - initial_epoch > 1:
            if data.one_shot:
                raise ValueError(
                    f"fit got a one-shot iterator ({type(data.source).__name__}) and "
                    f"epochs={epochs}: it would be exhausted after the first epoch. Pass "
                    "steps_per_epoch=... (epochs then continue from the same iterator), or a "
                    "re-iterable dataset."
                )
        plan = _Plan(data, bs, steps_per_epoch, drop_remainder, pad=False)
        self._last_batch = plan.first
        self._begin(training=True)
        cbs = None
        try:
            self._prepare(plan.first, True, verbose)
            cbs, _ = self._callback_list(callbacks, verbose, "fit")
            cbs.set_params({"epochs": epochs, "steps": plan.steps, "verbose": verbose})
            self._running, self._fit_data = cbs, data
            self.stop_training = False
            self.epoch, self._batch_in_epoch, self._epoch_complete = int(initial_epoch), 0, False
            self._resume_from(cbs, resume)
            with self._catch_interrupt():
                self._hook(cbs, "on_train_begin", None)
                logs = self._fit_epochs(cbs, plan, epochs, shuffle, val, bs, validation_steps, validation_freq, max_steps)
                self._hook(cbs, "on_train_end", logs)
        finally:
            self._running, self._fit_data = None, None
            self._end()
        return self.history

    def _resume_from(self, cbs: Any, resume: bool) -> None:
        """Load a backup (``BackupAndRestore``, always) or, with ``resume``, the latest checkpoint
        of the first callback with ``latest_state()`` (``ModelCheckpoint``)."""
        sources = [cb for cb in cbs if callable(getattr(cb, "latest_state", None))]
        automatic = [cb for cb in sources if getattr(cb, "restores_automatically", False)]
        for cb in automatic:
            tree = cb.latest_state()
            if tree is not None:
                self.load_checkpoint_state(tree)
                return
        if not resume:
            return
        for cb in sources:
            if cb not in automatic:
                tree = cb.latest_state()  # says so in one line when there is none
                if tree is not None:
                    self.load_checkpoint_state(tree)
                return
        if not automatic:
            raise ValueError(
                "fit(resume=True) needs a checkpointing callback with latest_state() (such as "
                "callbacks.ModelCheckpoint or callbacks.BackupAndRestore) in callbacks=."
            )

    def _validation_source(self, validation_data: Any) -> ArrayData | IterData:
        if isinstance(validation_data, tuple) and datalib._all_arrays(validation_data):
            if len(validation_data) not in (2, 3):
                raise ValueError(
                    f"validation_data must be (x, y) or (x, y, sample_weight), got a sequence of "
                    f"{len(validation_data)} arrays."
                )
            return datalib.from_user(tuple(validation_data), keys=self._keys)
        return datalib.from_user(validation_data, keys=self._keys)

    def _fit_epochs(self, cbs, plan, epochs, shuffle, val, bs, val_steps, val_freq, max_steps) -> dict:
        logs: dict[str, float] = {}
        self._max_steps = max_steps
        while self.epoch < epochs:
            epoch = self.epoch
            if self._batch_in_epoch == 0 or not self._state.metrics:
                self._init_metrics()
            self._hook(cbs, "on_epoch_begin", epoch, None)
            if isinstance(plan.data, ArrayData):
                self._array_epoch(cbs, plan, epoch, shuffle)
            else:
                self._iter_epoch(cbs, plan)
            if self._interrupted:
                break
            logs = self._host_logs(self.compute_logs_jit())
            if val is not None and self._validate_now(epoch, val_freq):
                val_logs = self._evaluate_source(val, bs, val_steps, cbs, in_fit=True)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            lr = self.learning_rate
            if lr is not None:
                logs["lr"] = lr
            else:
                logs["lr_scale"] = self.lr_scale
            self._epoch_complete = True
            self._hook(cbs, "on_epoch_end", epoch, logs)
            self.epoch, self._batch_in_epoch, self._epoch_complete = epoch + 1, 0, False
            if self.stop_training:
                break
        return logs

    def compute_logs_jit(self) -> dict[str, Any]:
        """The running logs of the live state, as device arrays."""
        return self._compiled("logs")(self._state.metrics, self._state.counters)

    @staticmethod
    def _validate_now(epoch: int, freq: int | list[int]) -> bool:
        if isinstance(freq, int):
            return (epoch + 1) % freq == 0
        return (epoch + 1) in freq

    def _set_pos(self, pos: int) -> None:
        self._state = self._state._replace(counters=steplib.set_position(self._state.counters, np.int32(pos)))

    def _permutation(self, epoch: int, n: int, shuffle: bool) -> jax.Array:
        if not shuffle:
            return jnp.arange(n, dtype=jnp.int32)
        key = jax.random.fold_in(self._shuffle_key, epoch)
        return jax.random.permutation(key, n).astype(jnp.int32)

    def _array_epoch(self, cbs, plan: _Plan, epoch: int, shuffle: bool) -> None:
        data, bs, steps = plan.data, plan.bs, plan.steps
        fused = self.steps_per_execution
        with_logs = self._needs_logs(cbs, "train")
        has_begin = cbs.overrides("on_train_batch_begin")
        has_end = cbs.overrides("on_train_batch_end")
        perm = self._permutation(epoch, data.n, shuffle)
        i = self._batch_in_epoch
        self._set_pos(i)
        treedef = self._flat_state()[1]
        single = self._compiled("train", treedef, gather=Gather(bs, bs, False), fused=1, with_logs=with_logs)
        block = (
            self._compiled("train", treedef, gather=Gather(bs, bs, False), fused=fused, with_logs=with_logs)
            if fused > 1 else None
        )
        tail = (
            self._compiled("train", treedef, gather=Gather(plan.rem, bs, False), fused=1, with_logs=with_logs)
            if plan.rem else None
        )
        full = min(plan.full, steps)
        max_steps = self._max_steps
        while i < steps and not self.stop_training:
            if max_steps is not None and self.step >= max_steps:
                self.stop_training = True
                break
            if block is not None and i + fused <= full and (max_steps is None or self.step + fused <= max_steps):
                fn, k = block, fused
            else:
                fn, k = (single, 1) if i < full else (tail, 1)
            if has_begin and k == 1:
                self._batch_hook(cbs, "on_train_batch_begin", i, None, with_logs)
            leaves, logs = fn(self._flat_state()[0], data.batch, perm)
            self._set_flat_state(leaves)
            self.step += k
            i += k
            self._batch_in_epoch = i
            if has_end or (has_begin and k > 1):
                self._deliver(cbs, i - k, k, logs, with_logs, has_begin and k > 1)
        if max_steps is not None and self.step >= max_steps:
            self.stop_training = True

    def _iter_epoch(self, cbs, plan: _Plan) -> None:
        fused = self.steps_per_execution
        with_logs = self._needs_logs(cbs, "train")
        has_begin = cbs.overrides("on_train_batch_begin")
        has_end = cbs.overrides("on_train_batch_end")
        treedef = self._flat_state()[1]
        single = self._compiled("train", treedef, gather=None, fused=1, with_logs=with_logs)
        block = self._compiled("train", treedef, gather=None, fused=fused, with_logs=with_logs) if fused > 1 else None
        i = self._batch_in_epoch
        max_steps = self._max_steps
        source = plan.data.epoch(plan.steps, skip=i)
        pending: list[Any] = []

        def run(fn: Any, batch: Any, k: int) -> None:
            nonlocal i
            if has_begin and k == 1:
                self._batch_hook(cbs, "on_train_batch_begin", i, None, with_logs)
            leaves, logs = fn(self._flat_state()[0], batch, None)
            self._set_flat_state(leaves)
            self.step += k
            i += k
            self._batch_in_epoch = i
            plan.data.advance(k)
            if has_end or (has_begin and k > 1):
                self._deliver(cbs, i - k, k, logs, with_logs, has_begin and k > 1)

        def flush() -> None:
            if len(pending) == fused and len({datalib.shapes_of(b) for b in pending}) == 1:
                run(block, jax.device_put(datalib.stack(pending)), fused)
            else:
                for b in pending:
                    run(single, jax.device_put(b), 1)
            pending.clear()

        batches = source if block is not None else _prefetch(source)
        seen = False
        for batch in batches:
            seen = True
            if self.stop_training or (max_steps is not None and self.step >= max_steps):
                break
            if block is None:
                run(single, batch, 1)
                continue
            pending.append(batch)
            room = max_steps is None or self.step + fused <= max_steps
            if len(pending) == fused and room:
                flush()
            elif len(pending) == fused or not room:
                for b in pending:
                    run(single, jax.device_put(b), 1)
                pending.clear()
        if pending and not self.stop_training:
            flush()
        if not seen and i == 0:
            raise ValueError(
                "The dataset yielded no batch in this epoch; with a one-shot iterator, pass "
                "steps_per_epoch so that every epoch has data, or give more data."
            )
        if max_steps is not None and self.step >= max_steps:
            self.stop_training = True

    # -- callbacks dispatch -------------------------------------------------------------
    def _hook(self, cbs: Any, hook: str, *args: Any) -> None:
        """Call an epoch-level hook with the model current; take back what callbacks changed."""
        if not cbs.overrides(hook):
            return
        self._sync()
        cbs.call(hook, *args)
        self._pull_changes()

    def _batch_hook(self, cbs: Any, hook: str, batch: int, logs: Any, with_logs: bool) -> None:
        if with_logs:
            self._sync()
            cbs.call(hook, batch, logs)
            self._pull_changes()
        else:
            cbs.call(hook, batch, logs)

    def _deliver(
        self, cbs: Any, first: int, k: int, logs: Any, with_logs: bool, begin_too: bool, mode: str = "train"
    ) -> None:
        """Run the batch hooks of ``k`` steps that just ran (a fused block: after it)."""
        hook_begin, hook_end = f"on_{mode}_batch_begin", f"on_{mode}_batch_end"
        if with_logs:
            host = jax.device_get(logs)
        for j in range(k):
            step_logs = None
            if with_logs:
                step_logs = self._host_logs(host, j if k > 1 else None)
            if begin_too:
                self._batch_hook(cbs, hook_begin, first + j, None, with_logs)
            self._batch_hook(cbs, hook_end, first + j, step_logs, with_logs)

    # -- evaluate ------------------------------------------------------------------------
    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        *,
        batch_size: int | None = None,
        steps: int | None = None,
        sample_weight: Any = None,
        callbacks: Any = None,
        verbose: Any = "auto",
    ) -> dict[str, float]:
        """Loss and metrics over the data in eval mode; returns ``{"loss": ..., ...}``.

        The partial last batch is padded and masked: the result is exact and no new shape is
        compiled (unless the loss is a scalar-returning callable or ``compute_loss`` is
        overridden; then it runs at its true size).
        """
        verbose = _verbose(verbose)
        bs = _batch_size(batch_size)
        data = datalib.from_user(x, y, sample_weight, keys=self._keys)
        outer = self._outer_call()  # evaluate / predict may run inside a fit's callback
        self._begin(training=False)
        try:
            first = _Plan(data, bs, steps, False, pad=True).first
            self._last_batch = first
            self._prepare(first, False, verbose)
            cbs, _ = self._callback_list(callbacks, verbose, "evaluate")
            cbs.set_params({"epochs": 1, "steps": _eval_steps(data, bs, steps), "verbose": verbose})
            with self._catch_interrupt():
                return self._evaluate_source(data, bs, steps, cbs, in_fit=False)
        finally:
            self._end()
            self._resume_outer(outer)

    def _evaluate_source(self, data: ArrayData | IterData, bs: int, steps: int | None, cbs: Any, in_fit: bool) -> dict[str, float]:
        live = self._state
        state = TrainState(live.params, live.others, None, self._fresh_metrics(), steplib.new_counters())
        leaves, treedef = jax.tree.flatten(state)
        with_logs = self._needs_logs(cbs, "test")
        self._hook(cbs, "on_test_begin", None)
        has_begin = cbs.overrides("on_test_batch_begin")
        has_end = cbs.overrides("on_test_batch_end")
        i = 0
        for fn, k, args in self._eval_units(data, bs, steps, treedef, with_logs):
            if has_begin and k == 1:
                self._batch_hook(cbs, "on_test_batch_begin", i, None, with_logs)
            leaves, logs = fn(leaves, *args)
            if has_end or (has_begin and k > 1):
                self._deliver(cbs, i, k, logs, with_logs, has_begin and k > 1, mode="test")
            i += k
            if self._interrupted and not in_fit:
                break
        state = jax.tree.unflatten(treedef, leaves)
        results = self._host_logs(self._compiled("logs")(state.metrics, state.counters))
        self._hook(cbs, "on_test_end", results)
        return results

    def _eval_units(self, data: Any, bs: int, steps: int | None, treedef: Any, with_logs: bool) -> Iterator[tuple]:
        """``(compiled eval fn, number of steps it runs, its arguments after the state)``:
        blocks of ``steps_per_execution`` steps, single steps for the rest."""
        fused = self.steps_per_execution

        def compiled(gather: Gather | None, k: int = 1) -> Any:
            return self._compiled("eval", treedef, gather=gather, fused=k, with_logs=with_logs)

        if isinstance(data, ArrayData):
            n = data.n
            total = _eval_steps(data, bs, steps)
            n_dev = jnp.asarray(n, jnp.int32)
            if self._maskable:  # every batch is full-size: the last one is padded and masked
                full, perm, gather, tail = total, None, Gather(bs, bs, True), None
            else:  # the partial last batch runs at its true size
                full, rem = min(divmod(n, bs)[0], total), n % bs
                perm, gather = jnp.arange(n, dtype=jnp.int32), Gather(bs, bs, False)
                tail = compiled(Gather(rem, bs, False)) if total > full else None
            single = compiled(gather)
            block = compiled(gather, fused) if fused > 1 and full >= fused else None
            i = 0
            while i < total:
                if block is not None and i + fused <= full:
                    yield block, fused, (data.batch, perm, n_dev)
                    i += fused
                else:
                    yield (single if i < full else tail), 1, (data.batch, perm, n_dev)
                    i += 1
            return
        single = compiled(None)
        size = None

        def padded(batch: Any) -> Any:
            nonlocal size
            if not self._maskable:
                return batch
            rows = datalib.batch_size_of(batch)
            size = size or rows
            return datalib.pad_batch(batch, max(size, rows), self._keys)

        if fused <= 1:
            for batch in _prefetch(padded(b) for b in data.epoch(steps)):
                yield single, 1, (batch, None, None)
            return
        block = compiled(None, fused)
        for group in _groups((padded(b) for b in data.epoch(steps)), fused):
            if len(group) == fused and len({datalib.shapes_of(b) for b in group}) == 1:
                yield block, fused, (jax.device_put(datalib.stack(group)), None, None)
            else:
                for b in group:
                    yield single, 1, (jax.device_put(b), None, None)

    # -- predict -------------------------------------------------------------------------
    def predict(
        self,
        x: Any,
        *,
        batch_size: int | None = None,
        steps: int | None = None,
        callbacks: Any = None,
        verbose: Any = "auto",
    ) -> Any:
        """The model's outputs in eval mode, one row per input example (numpy, stacked).

        Array inputs are batched and the partial last batch is padded (no new compile); the
        padding is cut from the result. Pytrees of outputs are stacked leaf by leaf.
        """
        verbose = _verbose(verbose)
        bs = _batch_size(batch_size)
        if datalib._all_arrays(x) and not (isinstance(x, list) and not datalib.is_array(x[0])):
            data: Any = datalib.from_user(x, keys=self._keys, need_targets=False, inputs_only=True)
        else:
            data = datalib.from_user(x, keys=self._keys, need_targets=False)
        outer = self._outer_call()  # evaluate / predict may run inside a fit's callback
        self._begin(training=False)
        try:
            cbs, _ = self._callback_list(callbacks, verbose, "predict")
            cbs.set_params({"epochs": 1, "steps": _eval_steps(data, bs, steps), "verbose": verbose})
            with self._catch_interrupt():
                return self._predict_source(data, bs, steps, cbs)
        finally:
            self._end()
            self._resume_outer(outer)

    def _predict_source(self, data: Any, bs: int, steps: int | None, cbs: Any) -> Any:
        leaves, treedef = self._flat_state()
        self._hook(cbs, "on_predict_begin", None)
        has_begin = cbs.overrides("on_predict_batch_begin")
        has_end = cbs.overrides("on_predict_batch_end")
        outputs: list[tuple[Any, list[int]]] = []  # (outputs of one call, rows of each batch)
        i = 0
        for fn, args, rows in self._predict_units(data, bs, steps, treedef):
            k = len(rows)
            if has_begin and k == 1:
                self._batch_hook(cbs, "on_predict_batch_begin", i, None, True)
            out = fn(leaves, *args)
            outputs.append((out, rows))
            for j in range(k) if has_end or (has_begin and k > 1) else ():
                if has_begin and k > 1:
                    self._batch_hook(cbs, "on_predict_batch_begin", i + j, None, True)
                one = out if k == 1 else jax.tree.map(lambda a, j=j: a[j], out)
                self._batch_hook(cbs, "on_predict_batch_end", i + j, {"outputs": one}, True)
            i += k
            if self._interrupted:
                break
        if not outputs:
            raise ValueError("predict got no batch: the dataset is empty.")
        pieces = []
        for out, rows in jax.device_get(outputs):
            if len(rows) == 1:
                pieces.append(jax.tree.map(lambda a, r=rows[0]: np.asarray(a)[:r], out))
            else:
                pieces += [jax.tree.map(lambda a, j=j, r=r: np.asarray(a)[j, :r], out) for j, r in enumerate(rows)]
        result = jax.tree.map(lambda *parts: np.concatenate(parts), *pieces)
        self._hook(cbs, "on_predict_end", None)
        return result

    def _predict_units(self, data: Any, bs: int, steps: int | None, treedef: Any) -> Iterator[tuple]:
        """``(compiled predict fn, its arguments after the state, rows of each batch)``: blocks
        of ``steps_per_execution`` batches, single batches for the rest; every batch is padded
        to the batch size."""
        fused = self.steps_per_execution
        if isinstance(data, ArrayData):
            self._last_batch = jax.tree.map(lambda a: a[:bs], data.batch)
            single = self._compiled("predict", treedef, gather=Gather(bs, bs, True))
            block = self._compiled("predict", treedef, gather=Gather(bs, bs, True), fused=fused) if fused > 1 else None
            n_dev = jnp.asarray(data.n, jnp.int32)
            total = _eval_steps(data, bs, steps)
            i = 0
            while i < total:
                k = fused if block is not None and i + fused <= total else 1
                rows = [min(bs, data.n - (i + j) * bs) for j in range(k)]
                yield (block if k > 1 else single), (data.batch, None, n_dev, jnp.asarray(i, jnp.int32)), rows
                i += k
            return
        single = self._compiled("predict", treedef, gather=None)
        size = None

        def padded(batch: Any) -> tuple[Any, int]:
            nonlocal size
            if self._last_batch is None:
                self._last_batch = batch
            rows = datalib.batch_size_of(batch)
            size = size or rows
            return datalib.pad_batch(batch, max(size, rows), self._keys, add_weights=False), rows

        if fused <= 1:
            moved = _prefetch((padded(b) for b in data.epoch(steps)), put=lambda p: (jax.device_put(p[0]), p[1]))
            for batch, rows in moved:
                yield single, (batch, None, None, None), [rows]
            return
        block = self._compiled("predict", treedef, gather=None, fused=fused)
        for group in _groups((padded(b) for b in data.epoch(steps)), fused):
            batches = [b for b, _ in group]
            if len(group) == fused and len({datalib.shapes_of(b) for b in batches}) == 1:
                yield block, (jax.device_put(datalib.stack(batches)), None, None, None), [r for _, r in group]
            else:
                for b, r in group:
                    yield single, (jax.device_put(b), None, None, None), [r]

    # -- single batches ---------------------------------------------------------------
    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None) -> dict[str, float]:
        """One optimizer step on one batch; returns that batch's logs."""
        batch = self._single_batch(x, y, sample_weight, need_targets=True)
        self._begin(training=True)
        try:
            self._prepare(batch, True, 1)
            leaves, treedef = self._flat_state()
            fn = self._compiled("train", treedef, gather=None, fused=1, with_logs=True)
            leaves, logs = fn(leaves, jax.device_put(batch), None)
            self._set_flat_state(leaves)
            self.step += 1
            return self._host_logs(logs)
        finally:
            self._end()

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None) -> dict[str, float]:
        """Loss and metrics of one batch in eval mode."""
        batch = self._single_batch(x, y, sample_weight, need_targets=True)
        outer = self._outer_call()  # evaluate / predict may run inside a fit's callback
        self._begin(training=False)
        try:
            self._prepare(batch, False, 1)
            state = TrainState(self._state.params, self._state.others, None, self._fresh_metrics(), steplib.new_counters())
            leaves, treedef = jax.tree.flatten(state)
            fn = self._compiled("eval", treedef, gather=None, with_logs=True)
            _, logs = fn(leaves, jax.device_put(batch), None, None)
            return self._host_logs(logs)
        finally:
            self._end()
            self._resume_outer(outer)

    def predict_on_batch(self, x: Any) -> Any:
        """The model's outputs for one batch of inputs, in eval mode (numpy)."""
        outer = self._outer_call()  # evaluate / predict may run inside a fit's callback
        self._begin(training=False)
        try:
            leaves, treedef = self._flat_state()
            fn = self._compiled("predict", treedef, gather=None)
            return jax.device_get(fn(leaves, jax.device_put((datalib.normalize_batch(x),)), None, None, None))
        finally:
            self._end()
            self._resume_outer(outer)

    def _single_batch(self, x: Any, y: Any, sample_weight: Any, need_targets: bool) -> Any:
        data = datalib.from_user(x, y, sample_weight, keys=self._keys, need_targets=need_targets)
        if not isinstance(data, ArrayData):
            raise TypeError("train_on_batch / test_on_batch take arrays, not a dataset.")
        return data.batch


def _eval_steps(data: Any, bs: int, steps: int | None) -> int | None:
    if isinstance(data, ArrayData):
        total = math.ceil(data.n / bs)
        return total if steps is None else min(steps, total)
    return steps if steps is not None else data.length
