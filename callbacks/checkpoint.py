"""ModelCheckpoint: save the Trainer's full state with orbax-checkpoint's CheckpointManager."""

from __future__ import annotations

import os
from typing import Any

from callbacks._monitor import improves, monitored_value, resolve_mode, warn_missing_monitor
from callbacks.base import Callback
from checkpointing import CheckpointStore


class ModelCheckpoint(Callback):
    """Saves the Trainer's state (model, optimizer, step, epoch, RNG key data, callback state).

    Each checkpoint is a numbered subdirectory of ``directory`` (numbered by optimizer step)
    written by orbax-checkpoint's ``CheckpointManager``: in the background where orbax allows,
    into a temporary directory renamed when complete, so an interrupted write never replaces
    the last good checkpoint. ``restore`` reads the newest readable one back, skipping with a
    warning any that fail to load. Unlike Keras, ``directory`` is a directory, not a file name.
    Saving step N first deletes checkpoints numbered N or higher (left by an abandoned run).
    Checkpointing callbacks run after the other callbacks of a ``fit``, so a checkpoint holds
    their state as of the end of the epoch or batch.

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
        self._store = CheckpointStore(self.directory, max_to_keep=max_to_keep, owner="ModelCheckpoint")

    # A batch-frequency checkpoint reads logs only when it saves (see ``on_train_batch_end``).
    pulls_batch_logs = True
    saves_checkpoints = True
    provides_checkpoints = True

    def overrides(self, hook: str) -> bool:
        """Batch hooks only when ``save_freq`` is a number of batches."""
        if hook == "on_train_batch_end":
            return self.save_freq != "epoch"
        return super().overrides(hook)

    @property
    def manager(self) -> Any:
        """The orbax ``CheckpointManager`` over ``directory`` (created on first use)."""
        return self._store.manager

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
        self._store.wait()

    def _maybe_save(self, logs: dict[str, float] | None) -> None:
        if self.save_best_only:
            current = monitored_value(logs, self.monitor)
            if current is None:
                warn_missing_monitor(
                    self, "ModelCheckpoint saves the best model by", logs, "; nothing saved", stacklevel=4
                )
                return
            if not improves(self.mode, current, self.best, 0.0):
                return
            self.best = current
        self.save()

    def save(self) -> int:
        """Write a checkpoint of the Trainer now; returns its number (the optimizer step)."""
        step = int(self.trainer.step)
        self._store.save(step, self.trainer.checkpoint_state())
        if self.verbose > 0:
            print(f"ModelCheckpoint: saved step {step} to {self.directory}")
        return step

    def latest_state(self, step: int | None = None) -> dict[str, Any] | None:
        """The newest readable checkpoint (or ``step``) as ``trainer.load_checkpoint_state`` takes it.

        Returns None, and says so in one line, when ``directory`` holds no checkpoint. A
        checkpoint that fails to load is skipped with a warning and the one before it is tried.
        ``fit(resume=True)`` calls this.
        """
        found = self._store.load(step)
        if found is None:
            print(f"ModelCheckpoint: no checkpoint in {self.directory}; starting fresh.")
            return None
        return found[1]

    def restore(self, step: int | None = None) -> int | None:
        """Load the newest readable checkpoint (or ``step``) into the Trainer; returns its step."""
        tree = self.latest_state(step)
        if tree is None:
            return None
        self.trainer.load_checkpoint_state(tree)
        return int(tree["step"])

    def state_dict(self) -> dict[str, Any]:
        """The best monitored value so far."""
        return {"best": self.best} if self.save_best_only else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        best = state.get("best")
        self.best = None if best is None else float(best)
