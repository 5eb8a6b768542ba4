"""Callback dispatch around the compiled calls, and the logs handed to callbacks.

Hooks nobody overrides are never called. The model is written into the user's Variables before
a hook that may read it, and what a callback wrote into the model is taken back after it. Per-step
logs are fetched from the device only for batch hooks of callbacks that take them as an
argument; callbacks with ``pulls_batch_logs`` get ``logs=None`` and ask ``trainer.batch_logs()``
when they need numbers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from callbacks.base import Callback, CallbackList
from callbacks.progress import ProgressBar
from trainer.session import Session

logger = logging.getLogger("trainer")


def host_logs(logs: dict[str, Any], order: Sequence[str], index: int | None = None) -> dict[str, float]:
    """Device logs as floats, ``order`` first (``index``: the step of fused per-step logs)."""
    values = jax.device_get(logs)
    out: dict[str, float] = {}
    rank = {name: i for i, name in enumerate(order)}
    for k, v in sorted(values.items(), key=lambda kv: rank.get(kv[0], len(rank))):
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


def callback_list(callbacks: list[Any], verbose: int, trainer: Any, history: Callback | None) -> CallbackList:
    """The callbacks of a call in the order they run: the given ones, then ``history`` (fit;
    after the others, as in Keras, so that keys they add to the logs are recorded), then the
    checkpointing callbacks (so that a checkpoint holds the others' state as of its step), and
    a ProgressBar when ``verbose`` (none when 0)."""
    for c in callbacks:
        if not isinstance(c, Callback):
            raise TypeError(f"callbacks must be callbacks.Callback instances, got {type(c).__name__}.")
    ordered = [c for c in callbacks if not c.saves_checkpoints]
    if history is not None:
        ordered.append(history)
    ordered += [c for c in callbacks if c.saves_checkpoints]
    if verbose and not any(isinstance(c, ProgressBar) for c in ordered):
        ordered.append(ProgressBar(verbose=verbose))
    if not verbose:
        ordered = [c for c in ordered if not isinstance(c, ProgressBar)]
    return CallbackList(ordered, trainer=trainer)


class Hooks:
    """The callbacks of one call, dispatched around its compiled steps.

    Args:
      callbacks: the callbacks.
      session: the live state the hooks see through the model.
      order: the log keys in display order.
      copy: take back changed model values as copies (the steps donate their buffers).
      model: the user's model; ``model.stop_training = True`` (Keras's spelling) set by a
        callback is taken off the model again and calls ``stop``.
      stop: requests the stop of the fit (a no-op outside ``fit``).
    """

    def __init__(
        self, callbacks: CallbackList, session: Session, order: Sequence[str], copy: bool,
        model: Any = None, stop: Callable[[], None] | None = None,
    ):
        self.callbacks, self.session, self.order, self.copy = callbacks, session, order, copy
        self.model, self.stop = model, stop

    def call(self, hook: str, *args: Any) -> None:
        """An epoch-level hook, with the model current; take back what callbacks changed."""
        if not self.callbacks.overrides(hook):
            return
        self.session.sync()
        self.callbacks.call(hook, *args)
        self.session.pull_changes(self.copy)
        self._model_stop()

    @contextlib.contextmanager
    def on_exception(self) -> Iterator[None]:
        """Within: an exception runs ``exception(error)`` and propagates."""
        try:
            yield
        except BaseException as error:
            self.exception(error)
            raise

    def exception(self, error: BaseException) -> None:
        """``on_train_exception(error)`` on every callback that defines it; one that raises is
        logged, so that ``error`` is the exception ``fit`` raises."""
        for cb in self.callbacks:
            if cb.overrides("on_train_exception"):
                try:
                    cb.on_train_exception(error)
                except Exception:  # noqa: BLE001 - the original error matters more
                    logger.exception("Trainer: %s.on_train_exception failed", type(cb).__name__)

    def _model_stop(self) -> None:
        model = self.model
        if model is None or "stop_training" not in vars(model):
            return
        value = vars(model)["stop_training"]
        delattr(model, "stop_training")  # the attribute must not become part of the model
        if value and self.stop is not None:
            logger.warning(
                "Trainer: a callback set model.stop_training (Keras's spelling); training stops. "
                "Set self.trainer.stop_training = True instead."
            )
            self.stop()

    def wants_logs(self, mode: str) -> bool:
        """Whether a batch hook of ``mode`` takes per-step logs (a host sync per step)."""
        return any(
            cb.overrides(h) and not cb.pulls_batch_logs
            for cb in self.callbacks for h in (f"on_{mode}_batch_begin", f"on_{mode}_batch_end")
        )

    def fusable(self, mode: str) -> bool:
        """Whether every batch hook of ``mode`` may run after a fused block."""
        return all(
            cb.fusable_batch_hooks
            for cb in self.callbacks
            if cb.overrides(f"on_{mode}_batch_begin") or cb.overrides(f"on_{mode}_batch_end")
        )

    def has(self, hook: str) -> bool:
        return self.callbacks.overrides(hook)

    def batch(self, hook: str, batch: int, logs: Any, synced: bool) -> None:
        """A batch hook; ``synced``: the model is written before and read back after."""
        if synced:
            self.session.sync()
            self.callbacks.call(hook, batch, logs)
            self.session.pull_changes(self.copy)
        else:
            self.callbacks.call(hook, batch, logs)
        self._model_stop()

    def after_steps(
        self, mode: str, first: int, k: int, logs: Any, with_logs: bool, current: Callable[[], Any]
    ) -> None:
        """The batch hooks of ``k`` steps that just ran (a fused block: begin and end hooks of
        each of its steps, after it). ``logs`` are a block's stacked per-step logs;
        ``current()`` gives the running logs now (those of a single step)."""
        begin, end = f"on_{mode}_batch_begin", f"on_{mode}_batch_end"
        has_begin, has_end = self.has(begin), self.has(end)
        if not has_end and not (has_begin and k > 1):
            return
        host = jax.device_get(logs if k > 1 else current()) if with_logs else None
        for j in range(k):
            step_logs = host_logs(host, self.order, j if k > 1 else None) if with_logs else None
            if has_begin and k > 1:
                self.batch(begin, first + j, None, with_logs)
            if has_end:
                self.batch(end, first + j, step_logs, with_logs)
