"""ModelCheckpoint: save the Trainer's full state with orbax-checkpoint's CheckpointManager."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from callbacks._monitor import improves, monitored_value, resolve_mode
from callbacks.base import Callback


def _string_keys(tree: Any) -> Any:
    """The same nested mappings with every key a string (orbax names files after keys)."""
    if isinstance(tree, Mapping):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _split_scalars(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Nested mappings split into arrays (saved by orbax) and Python scalars (saved as JSON)."""
    arrays: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            sub_arrays, sub_scalars = _split_scalars(value)
            if sub_arrays:
                arrays[key] = sub_arrays
            if sub_scalars:
                scalars[key] = sub_scalars
        elif _is_scalar(value):
            scalars[key] = value
        else:
            arrays[key] = value
    return arrays, scalars


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The nested union of two trees split by ``_split_scalars``."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class ModelCheckpoint(Callback):
    """Saves the Trainer's state (model, optimizer, step, epoch, RNG key data, callback state).

    Each checkpoint is a numbered subdirectory of ``directory`` (numbered by optimizer step)
    written by orbax-checkpoint's ``CheckpointManager``: in the background where orbax allows,
    into a temporary directory renamed when complete, so an interrupted write never replaces
    the last good checkpoint. ``restore`` reads the newest readable one back, skipping with a
    warning any that fail to load. Unlike Keras, ``directory`` is a directory, not a file name.

    Args:
      directory: where the checkpoints are written.
      monitor: the log key compared when ``save_best_only``, e.g. ``"val_loss"``.
      verbose: 1 prints a line for every checkpoint written.
      mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracy-like names, else ``"min"``).
      save_best_only: save only when ``monitor`` improves on the best value seen so far.
      save_freq: ``"epoch"`` (at the end of every epoch) or an int: every that many batches.
      max_to_keep: keep only the newest this many checkpoints (None: all).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        monitor: str = "val_loss",
        verbose: int = 0,
        mode: str = "auto",
        save_best_only: bool = False,
        save_freq: str | int = "epoch",
        max_to_keep: int | None = None,
    ):
        super().__init__()
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ValueError(
                f"ModelCheckpoint: save_freq must be 'epoch' or an int >= 1, got {save_freq!r}"
            )
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"ModelCheckpoint: max_to_keep must be None or >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.monitor = monitor
        self.verbose = verbose
        self.mode = resolve_mode("ModelCheckpoint", monitor, mode)
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self.max_to_keep = max_to_keep
        self.best: float | None = None
        self._batches_seen = 0
        self._warned_missing = False
        self._manager: ocp.CheckpointManager | None = None

    # A batch-frequency checkpoint reads logs only when it saves (see ``_batch_monitor``).
    pulls_batch_logs = True

    def overrides(self, hook: str) -> bool:
        """Batch hooks only when ``save_freq`` is a number of batches."""
        if hook == "on_train_batch_end":
            return self.save_freq != "epoch"
        return super().overrides(hook)

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The orbax ``CheckpointManager`` over ``directory`` (created on first use)."""
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._batches_seen = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._batches_seen += 1
        if self._batches_seen % self.save_freq:
            return
        if self.save_best_only and monitored_value(logs, self.monitor) is None:
            logs = self.trainer.batch_logs()  # one host sync, only at a save point
        self._maybe_save(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.save_freq == "epoch":
            self._maybe_save(logs)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self._manager is not None:
            self._manager.wait_until_finished()

    def _maybe_save(self, logs: dict[str, float] | None) -> None:
        if self.save_best_only:
            current = monitored_value(logs, self.monitor)
            if current is None:
                if not self._warned_missing:
                    self._warned_missing = True
                    warnings.warn(
                        f"ModelCheckpoint saves the best model by monitor={self.monitor!r}, which "
                        f"is not in the logs; available keys: {sorted(logs or {})}; nothing saved",
                        stacklevel=3,
                    )
                return
            if not improves(self.mode, current, self.best, 0.0):
                return
            self.best = current
        self.save()

    def save(self) -> int:
        """Write a checkpoint of the Trainer now; returns its number (the optimizer step)."""
        step = int(self.trainer.step)
        if step in self.manager.all_steps():
            self.manager.delete(step)  # the same step again (a repeated save): newest wins
        tree = {**self.trainer.checkpoint_state(), "callbacks": self._callback_states()}
        arrays, scalars = _split_scalars(_string_keys(tree))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays),
                meta=ocp.args.JsonSave(scalars),
            ),
        )
        if self.verbose > 0:
            print(f"ModelCheckpoint: saved step {step} to {self.directory}")
        return step

    def latest_state(self, step: int | None = None) -> dict[str, Any] | None:
        """The newest readable checkpoint (or ``step``) as ``trainer.load_checkpoint_state`` takes it.

        Callback state is loaded into the run's callbacks on the way. Returns None, and says so
        in one line, when ``directory`` holds no checkpoint. A checkpoint that fails to load is
        skipped with a warning and the one before it is tried. ``fit(resume=True)`` calls this.
        """
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"ModelCheckpoint: step {step} is not in {self.directory}; it has {sorted(steps)}"
                )
            steps = [step]
        for candidate in steps:
            try:
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped
                if step is not None:
                    raise
                warnings.warn(
                    f"ModelCheckpoint: checkpoint {candidate} in {self.directory} cannot be read "
                    f"({type(error).__name__}: {error}); trying the previous one",
                    stacklevel=2,
                )
                continue
            tree = _merge(restored.state or {}, restored.meta or {})
            self._load_callback_states(tree.get("callbacks", {}))
            return tree
        print(f"ModelCheckpoint: no checkpoint in {self.directory}; starting fresh.")
        return None

    def restore(self, step: int | None = None) -> int | None:
        """Load the newest readable checkpoint (or ``step``) into the Trainer; returns its step."""
        tree = self.latest_state(step)
        if tree is None:
            return None
        self.trainer.load_checkpoint_state(tree)
        return int(tree["step"])

    # -- the state of the run's callbacks ---------------------------------------------
    def _callbacks(self) -> list[Callback]:
        found = getattr(self.trainer, "callbacks", None) or [self]
        return [cb for cb in found if isinstance(cb, Callback)]

    def _callback_states(self) -> dict[str, Any]:
        states: dict[str, Any] = {}
        for index, cb in enumerate(self._callbacks()):
            state = cb.state_dict()
            if state:
                states[f"{index}_{type(cb).__name__}"] = state
        return states

    def _load_callback_states(self, states: Mapping[str, Any]) -> None:
        for index, cb in enumerate(self._callbacks()):
            state = states.get(f"{index}_{type(cb).__name__}")
            if state is not None:
                cb.load_state_dict(dict(state))

    def state_dict(self) -> dict[str, Any]:
        """The best monitored value so far."""
        return {"best": self.best} if self.save_best_only else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        best = state.get("best")
        self.best = None if best is None else float(best)
