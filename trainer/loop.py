"""The host loop of a pass: run the batch plan's units, advance the progress, run the hooks.

``Loop`` is made per call from its parts (the compiler, the step context, the live session, the
hooks and the progress counters); ``FusionTuner`` picks the steps per dispatch for
``steps_per_execution="auto"``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from trainer import model_state
from trainer.compiled import NewStepKeys, StepCompiler
from trainer.data import ArrayData, IterData
from trainer.hooks import Hooks
from trainer.model_state import BAD_LABEL, BAD_LABEL_VALUE, FIRST_NONFINITE, LONGEST, TrainState
from trainer.plan import BatchPlan, Unit, permutation
from trainer.session import Session
from trainer.steps import StepContext


@dataclasses.dataclass
class Progress:
    """Where training stands: the Trainer's ``step``, ``epoch``, the next ``batch`` of the
    epoch, whether the epoch's work is done, the stop requests, and the key the epochs' shuffle
    orders derive from."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    epoch_complete: bool = False
    stop: bool = False
    interrupted: bool = False
    shuffle_key: Any = None
    stop_reason: str | None = None

    def start(self, epoch: int) -> None:
        """A fit begins at the start of ``epoch``, with no stop requested."""
        self.stop, self.interrupted, self.stop_reason = False, False, None
        self.epoch, self.batch, self.epoch_complete = int(epoch), 0, False

    def request_stop(self, reason: str = "callback") -> None:
        """Stop after the current step (the first reason given is kept)."""
        self.stop, self.stop_reason = True, self.stop_reason or reason


logger = logging.getLogger("trainer")


def check_labels_seen(counters: np.ndarray, classes: int | None) -> None:
    """A ValueError when the device saw an integer target outside ``0 .. classes - 1``."""
    if classes is not None and int(counters[BAD_LABEL]):
        raise ValueError(
            f"A batch holds the integer target {int(counters[BAD_LABEL_VALUE])}, but the model has "
            f"{classes} outputs, so the labels must be 0 .. {classes - 1}. Those steps were "
            "skipped; fix the labels (or the model's number of outputs)."
        )


class NonfiniteWatch:
    """Stops training after ``limit`` non-finite steps in a row, without waiting for the device.

    After each call the loop hands over the new counters (never donated); every ``every`` steps
    the newest of them that the device has finished is read. ``LONGEST`` only grows, so a streak
    is seen even when the counters of the steps inside it were never read.
    """

    def __init__(self, limit: int | None, every: int = 16, classes: int | None = None):
        self.limit, self.every, self.classes = limit, every, classes
        self._pending: collections.deque[Any] = collections.deque(maxlen=64)
        self._since = 0

    def add(self, counters: jax.Array, steps: int) -> bool:
        """True when the limit was reached (as far as the finished steps tell)."""
        if self.limit is None and self.classes is None:
            return False
        self._pending.append(counters)
        self._since += steps
        if self._since < self.every:
            return False
        ready = None
        while self._pending and self._pending[0].is_ready():
            ready = self._pending.popleft()
        if ready is None:
            return False
        self._since = 0
        return self.tripped(ready)

    def tripped(self, counters: jax.Array) -> bool:
        """Whether ``counters`` show ``limit`` non-finite steps in a row (reads them: a sync);
        a ValueError when they show a target outside the classes."""
        c = np.asarray(counters)
        check_labels_seen(c, self.classes)
        if self.limit is None or int(c[LONGEST]) < self.limit:
            return False
        self._pending.clear()
        logger.error(
            "Trainer: %d steps in a row had a non-finite loss or gradients (the first non-finite "
            "step was %d); training stopped. Those steps were skipped: the model holds the last "
            "finite state.", int(c[LONGEST]), int(c[FIRST_NONFINITE]),
        )
        return True


class FusionTuner:
    """Chooses how many steps to fuse per dispatch from the measured step time.

    The first pass of a kind (per step context and data shape) runs single steps; after the
    first (compiling) step it times ``probe`` more, then fuses as many steps as run in
    ``target_seconds`` (so that the batch hooks and the progress bar still hear from the loop that
    often), at most ``cap``. With array data the block size divides the pass's full batches,
    leaving at most a sixteenth of them to single steps. Later passes reuse the choice.
    """

    def __init__(self, target_seconds: float = 0.1, cap: int = 256, probe: int = 8):
        self.target_seconds, self.cap, self.probe = target_seconds, cap, probe
        self.chosen: dict[Any, int] = {}

    def begin(self, plan: BatchPlan, key: Any) -> _Probe | None:
        """Set ``plan.fused`` from an earlier choice, or return a probe that will."""
        if key in self.chosen:
            plan.fused = self.chosen[key]
            return None
        plan.fused = 1
        return _Probe(self, plan, key)

    def choose(self, seconds_per_step: float, plan: BatchPlan) -> int:
        target = max(1, min(self.cap, int(self.target_seconds / max(seconds_per_step, 1e-9))))
        if plan.full:  # array data: a block size that tiles the pass's full batches
            for k in range(min(target, plan.full), 0, -1):
                if plan.full % k <= plan.full // 16:
                    return k
            return 1
        k = 1
        while k * 2 <= min(target, 64, plan.steps or 64):
            k *= 2
        return k


class _Probe:
    def __init__(self, tuner: FusionTuner, plan: BatchPlan, key: Any):
        self.tuner, self.plan, self.key = tuner, plan, key
        self.seen = 0
        self.start = 0.0

    def observe(self, unit: Unit, out: Any) -> bool:
        """Count a unit that ran (its outputs ``out``); True once the choice is made."""
        self.seen += unit.steps
        if self.seen == 1:
            jax.block_until_ready(out)
            self.start = time.perf_counter()
        elif self.seen == 1 + self.tuner.probe:
            jax.block_until_ready(out)
            k = self.tuner.choose((time.perf_counter() - self.start) / self.tuner.probe, self.plan)
            self.tuner.chosen[self.key] = self.plan.fused = k
            return True
        return False


class Loop:
    """Runs passes of one call.

    Args:
      compiler: the compiled steps.
      ctx: the step context of the call (train mode for fit, eval mode otherwise).
      eval_ctx: the context of evaluation passes (validation during fit).
      session: the live state.
      hooks: the callbacks.
      progress: the counters a fit advances.
      donate: train steps donate the state's buffers.
      tuner: chooses ``fused`` per pass (``steps_per_execution="auto"``), or None.
      max_consecutive_nonfinite: stop after this many non-finite train steps in a row (None:
        never).
      learn_keys: called with the new scalar logs a step returns (``NewStepKeys``); it keeps
        running means for them and returns the new ``(ctx, eval_ctx)``.
      fresh_metrics: zeroed running metrics (of the layout after ``learn_keys``).
      shardings_of: the shardings a state's leaves keep through a step (``Placement``), or
        None on one device.
      place: puts the session's state on the mesh (after a checkpoint was loaded), or None.
      serial: wait for each call before dispatching the next (``Placement.serial``).
    """

    def __init__(
        self, compiler: StepCompiler, ctx: StepContext, eval_ctx: StepContext, session: Session,
        hooks: Hooks, progress: Progress, *, donate: bool, tuner: FusionTuner | None,
        max_consecutive_nonfinite: int | None = None,
        learn_keys: Any = None, fresh_metrics: Any = None, shardings_of: Any = None,
        place: Any = None, serial: bool = False,
    ):
        self.compiler, self.ctx, self.eval_ctx = compiler, ctx, eval_ctx
        self.session, self.hooks, self.progress = session, hooks, progress
        self.donate, self.tuner = donate, tuner
        self.watch = NonfiniteWatch(max_consecutive_nonfinite, classes=ctx.label_classes)
        self._learn_keys, self._fresh_metrics = learn_keys, fresh_metrics
        self._shardings_of = shardings_of or (lambda leaves: None)
        self._place = place or (lambda: None)
        self.serial = serial

    def _settle(self, result: Any) -> None:
        """Wait for a call's ``result`` when calls must not queue up (``serial``)."""
        if self.serial:
            jax.block_until_ready(result)

    def _learn(self, keys: tuple[str, ...]) -> None:
        if self._learn_keys is None:
            raise NewStepKeys(keys)
        self.ctx, self.eval_ctx = self._learn_keys(keys)

    def _logs_of(self, state: TrainState) -> Any:
        return self.compiler.get("logs", self.eval_ctx)(state.metrics, state.counters)

    def _current_logs(self) -> Any:
        return self._logs_of(self.session.state)

    def check_nonfinite(self) -> None:
        """Read the live counters now (a sync) and stop at the streak limit."""
        if not self.progress.stop and self.watch.tripped(self.session.state.counters):
            self.progress.stop, self.progress.stop_reason = True, "nonfinite"

    def _probe(self, plan: BatchPlan, ctx: StepContext, mode: str) -> _Probe | None:
        if self.tuner is None:
            return None
        if not self.hooks.fusable(mode):
            plan.fused = 1
            return None
        key = (plan.kind, ctx, plan.batch_size, plan.steps, type(plan.data).__name__)
        return self.tuner.begin(plan, key)

    # -- fit ---------------------------------------------------------------------------
    def fit(self, plan: BatchPlan, epochs: int, shuffle: bool, max_steps: int | None,
            epoch_logs: Callable[[int], dict[str, float]]) -> dict[str, float]:
        """Epochs from ``progress.epoch`` up to ``epochs`` (or a stop); ``epoch_logs(epoch)``
        gives each finished epoch's logs (validation included). Returns the last logs."""
        p, session, hooks = self.progress, self.session, self.hooks
        logs: dict[str, float] = {}
        while p.epoch < epochs:
            epoch = p.epoch
            if p.batch == 0 or not session.state.metrics:
                session.state = session.state._replace(metrics=self._fresh_metrics())
            hooks.call("on_epoch_begin", epoch, None)
            perm = None
            if shuffle and isinstance(plan.data, ArrayData):
                perm = permutation(p.shuffle_key, epoch, plan.data.n, plan.data.rows)
            self.train_epoch(plan, perm, max_steps)
            if p.interrupted:
                break
            self.check_nonfinite()
            logs = epoch_logs(epoch)
            p.epoch_complete = True
            hooks.call("on_epoch_end", epoch, logs)
            p.epoch, p.batch, p.epoch_complete = epoch + 1, 0, False
            if p.stop:
                break
        return logs

    def train_epoch(self, plan: BatchPlan, perm: jax.Array | None, max_steps: int | None) -> None:
        """The epoch's batches from ``progress.batch`` on, while no stop is requested."""
        p, session, hooks = self.progress, self.session, self.hooks
        start = i = p.batch
        session.state = session.state._replace(counters=model_state.set_position(session.state.counters, np.int32(i)))
        treedef = session.flat()[1]
        probe = self._probe(plan, self.ctx, "train")
        has_begin = hooks.has("on_train_batch_begin")
        budget = None if max_steps is None else max(max_steps - p.step, 0)
        self._place()
        shardings = self._shardings_of(session.flat()[0])
        fns: dict[int, Any] = {}  # by identity of the plan's (memoized) programs
        for unit in plan.units(start, perm, budget):
            if p.stop:
                break
            if has_begin and unit.steps == 1:
                hooks.batch("on_train_batch_begin", i, None, plan.with_logs)
            fn = fns.get(id(unit.program))
            if fn is None:
                fn = fns[id(unit.program)] = self.compiler.get(
                    "train", self.ctx, unit.program, treedef, self.donate, shardings
                )
            try:
                leaves, logs = fn(session.flat()[0], *unit.args)
            except NewStepKeys as new:  # raised while tracing: nothing ran
                self._learn(new.keys)
                session.state = session.state._replace(metrics=self._fresh_metrics())
                treedef = session.flat()[1]
                shardings = self._shardings_of(session.flat()[0])
                fns.clear()
                fn = fns[id(unit.program)] = self.compiler.get(
                    "train", self.ctx, unit.program, treedef, self.donate, shardings
                )
                leaves, logs = fn(session.flat()[0], *unit.args)
            self._settle(leaves[-1])
            session.set_flat(leaves)
            p.step += unit.steps
            i += unit.steps
            p.batch = i
            if isinstance(plan.data, IterData):
                plan.data.advance(unit.steps)
            hooks.after_steps("train", i - unit.steps, unit.steps, logs, plan.with_logs, self._current_logs)
            if probe is not None and probe.observe(unit, leaves):
                probe = None
            if self.watch.add(leaves[-1], unit.steps):
                p.stop, p.stop_reason = True, "nonfinite"
        if i == 0 and budget != 0 and not p.stop:
            raise ValueError(
                "The dataset yielded no batch in this epoch; with a one-shot iterator, pass "
                "steps_per_epoch so that every epoch has data, or give more data."
            )
        if max_steps is not None and p.step >= max_steps:
            p.stop = True
            p.stop_reason = p.stop_reason or "max_steps"

    # -- evaluate ----------------------------------------------------------------------
    def evaluate(self, plan: BatchPlan, metrics: dict, in_fit: bool) -> TrainState:
        """The evaluation state after the plan's batches (the live parameters, fresh
        ``metrics``); the test hooks run around it, but ``on_test_end`` (which needs the
        results)."""
        live = self.session.state
        state = TrainState(live.params, live.others, None, metrics, model_state.new_counters())
        leaves, treedef = jax.tree.flatten(state)
        shardings = self._shardings_of(leaves)
        hooks, ctx = self.hooks, self.eval_ctx
        probe = self._probe(plan, ctx, "test")
        hooks.call("on_test_begin", None)
        has_begin = hooks.has("on_test_batch_begin")
        i = 0
        for unit in plan.units():
            if has_begin and unit.steps == 1:
                hooks.batch("on_test_batch_begin", i, None, plan.with_logs)
            try:
                leaves, logs = self.compiler.get("eval", ctx, unit.program, treedef, False, shardings)(leaves, *unit.args)
            except NewStepKeys as new:  # raised while tracing: nothing ran
                self._learn(new.keys)
                ctx = self.eval_ctx
                state = jax.tree.unflatten(treedef, leaves)._replace(metrics=self._fresh_metrics())
                leaves, treedef = jax.tree.flatten(state)
                shardings = self._shardings_of(leaves)
                leaves, logs = self.compiler.get("eval", ctx, unit.program, treedef, False, shardings)(leaves, *unit.args)
            self._settle(leaves[-1])
            hooks.after_steps(
                "test", i, unit.steps, logs, plan.with_logs,
                lambda leaves=leaves, treedef=treedef: self._logs_of(jax.tree.unflatten(treedef, leaves)),
            )
            i += unit.steps
            if probe is not None and probe.observe(unit, leaves):
                probe = None
            if self.progress.interrupted and not in_fit:
                break
        if i > 0 and ctx.label_classes is not None:
            check_labels_seen(np.asarray(leaves[-1]), ctx.label_classes)
        if i == 0:
            raise ValueError(
                "The evaluation ran over no batch: " + (
                    "its data iterator is exhausted (a one-shot iterator used for validation "
                    "needs validation_steps, and enough batches for every validation)."
                    if isinstance(plan.data, IterData) else "steps=0."
                )
            )
        return jax.tree.unflatten(treedef, leaves)

    # -- predict -----------------------------------------------------------------------
    def predict(self, plan: BatchPlan) -> list[tuple[Any, tuple[int, ...]]]:
        """``(outputs of one call, real rows of each of its batches)`` for each unit."""
        leaves, treedef = self.session.flat()
        hooks, ctx = self.hooks, self.eval_ctx
        probe = self._probe(plan, ctx, "predict")
        has_begin = hooks.has("on_predict_batch_begin")
        has_end = hooks.has("on_predict_batch_end")
        outputs = []
        i = 0
        for unit in plan.units():
            k = unit.steps
            if has_begin and k == 1:
                hooks.batch("on_predict_batch_begin", i, None, True)
            out = self.compiler.get("predict", ctx, unit.program, treedef)(leaves, *unit.args)
            self._settle(out)
            outputs.append((out, unit.rows))
            for j in range(k) if has_end or (has_begin and k > 1) else ():
                if has_begin and k > 1:
                    hooks.batch("on_predict_batch_begin", i + j, None, True)
                if has_end:  # the batch's real rows, without the padding
                    rows = unit.rows[j]
                    one = jax.tree.map(lambda a, j=j, r=rows, k=k: (a if k == 1 else a[j])[:r], out)
                    hooks.batch("on_predict_batch_end", i + j, {"outputs": one}, True)
            i += k
            if probe is not None and probe.observe(unit, out):
                probe = None
            if self.progress.interrupted:
                break
        return outputs


def stitch_outputs(outputs: list[tuple[Any, tuple[int, ...]]], fetch: Callable[[Any], Any] = jax.device_get) -> Any:
    """One numpy array per output leaf, the padding cut, batches in order (``fetch`` brings
    the outputs to the host)."""
    if not outputs:
        raise ValueError("predict got no batch: the dataset is empty.")
    pieces = []
    fetched = fetch([out for out, _ in outputs])
    for out, (_, rows) in zip(fetched, outputs, strict=True):
        if len(rows) == 1:
            pieces.append(jax.tree.map(lambda a, r=rows[0]: np.asarray(a)[:r], out))
        else:
            pieces += [jax.tree.map(lambda a, j=j, r=r: np.asarray(a)[j, :r], out) for j, r in enumerate(rows)]
    return jax.tree.map(lambda *parts: np.concatenate(parts), *pieces)
