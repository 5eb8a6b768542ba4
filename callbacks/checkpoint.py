"""ModelCheckpoint: save the Trainer's full state with orbax-checkpoint's CheckpointManager."""

from __future__ import annotations

import logging
import os
from typing import Any

from callbacks._monitor import improves, monitored_value, resolve_mode, warn_missing_monitor
from callbacks._stored import StoreCallback
from checkpointing import CheckpointStore, NonFiniteStateError

logger = logging.getLogger("callbacks")


class ModelCheckpoint(StoreCallback):
    """Saves the Trainer's state (model, optimizer, step, epoch, RNG key data, callback state).

    Each checkpoint is a numbered subdirectory of ``directory`` (numbered by optimizer step)
    written by orbax-checkpoint's ``CheckpointManager``: in the background where orbax allows,
    into a temporary directory renamed when complete, so an interrupted write never replaces
    the last good checkpoint. ``restore`` reads the newest usable one back, skipping with a
    warning any that fail to load or to check. Unlike Keras, ``directory`` is a directory, not a
    file name. Checkpointing callbacks run after the other callbacks of a ``fit``, so a
    checkpoint holds their state as of the end of the epoch or batch.

    A directory holding checkpoints that this callback did not write makes ``fit`` raise
    ``FileExistsError`` before training, unless the run continues from them (``fit(...,
    resume=True)``, or a ``BackupAndRestore`` backup restored in this ``fit``) or ``overwrite``
    is True. A continued run that saves step N deletes the checkpoints numbered N or higher
    (the future of the run it continues, abandoned).

    A state holding NaN or infinite values is never saved: the save is skipped with a warning
    (logger ``"callbacks"``) naming the step, and the newest checkpoint stays the last finite
    one. A NaN monitored value never counts as an improvement for ``save_best_only``. A failed
    write (a full disk) raises ``checkpointing.CheckpointWriteError`` naming the path, at that
    save or the next one; the checkpoints before it are kept.

    Args:
      directory: where the checkpoints are written.
      monitor: the log key compared when ``save_best_only``, e.g. ``"val_loss"``.
      verbose: 1 prints a line for every checkpoint written.
      mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracy-like names, else ``"min"``).
      save_best_only: save only when ``monitor`` improves on the best value seen so far.
      save_freq: ``"epoch"`` (at the end of every epoch) or an int: every that many batches.
      max_to_keep: keep only the newest this many checkpoints (None: all).
      overwrite: replace the checkpoints found in ``directory`` by another run: they are deleted
        when this run writes its first checkpoint (without ``resume=True``, ``fit`` otherwise
        refuses such a directory).
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
        overwrite: bool = False,
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
        self.overwrite = bool(overwrite)
        self.best: float | None = None
        self._batches_seen = 0
        self._written: set[int] = set()  # the steps this callback saved
        self._resumed_step: int | None = None  # the step latest_state() last returned
        self._replace: list[int] = []  # another run's checkpoints, deleted at the first save
        self._skipping = False  # a non-finite state was skipped (warned) since the last save
        self._store = CheckpointStore(self.directory, max_to_keep=max_to_keep, owner="ModelCheckpoint")

    # A batch-frequency checkpoint reads logs only when it saves (see ``on_train_batch_end``).
    pulls_batch_logs = True

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
        self._skipping = False
        resumed = self._resumed_step is not None and self._resumed_step == int(self.trainer.step)
        self._resumed_step = None
        foreign = [s for s in self._store.steps() if s not in self._written]
        self._replace = []
        if not foreign or resumed or _restored_from_backup(self.trainer):
            return
        if self.overwrite:
            self._replace = foreign
            return
        raise FileExistsError(
            f"ModelCheckpoint: {self.directory} already holds checkpoints {foreign} of another run; "
            "saving into it would delete or mix with them. Use fit(..., resume=True) to continue "
            "from the newest, ModelCheckpoint(..., overwrite=True) to replace them, or another directory."
        )

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

    def save(self) -> int | None:
        """Write a checkpoint of the Trainer now; returns its number (the optimizer step), or
        None when the state holds NaN or infinite values (nothing is written; a warning, once
        until the next save, names the step and the arrays)."""
        step = int(self.trainer.step)
        try:
            self._store.save(step, self.trainer.checkpoint_state(), replace=self._replace)
        except NonFiniteStateError as error:
            if not self._skipping:
                logger.warning("%s Later non-finite states are skipped silently.", error)
            self._skipping = True
            return None
        self._skipping, self._replace = False, []
        self._written.add(step)
        if self.verbose > 0:
            print(f"ModelCheckpoint: saved step {step} to {self.directory}")
        return step

    def latest_state(self, step: int | None = None) -> dict[str, Any] | None:
        """The newest usable checkpoint (or ``step``) as ``trainer.load_checkpoint_state`` takes it.

        Returns None, and says so in one line, when ``directory`` holds no checkpoint. A
        checkpoint that fails to load or to check is skipped with a warning and the one before
        it is tried; ``checkpointing.CheckpointReadError`` names each failure when none can be
        used. ``fit(resume=True)`` calls this; the ``fit`` that loads the tree may then save
        into ``directory``.
        """
        found = self._store.load(step, shardings=self._shardings())
        if found is None:
            self.say(f"ModelCheckpoint: no checkpoint in {self.directory}; starting fresh.")
            return None
        self._resumed_step = found[0]
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


def _restored_from_backup(trainer: Any) -> bool:
    """Whether a callback that restores automatically (``BackupAndRestore``) loaded a backup
    when this ``fit`` started (its ``restored_step`` is set): the run continues its own
    checkpoints."""
    return any(
        cb.restores_automatically and getattr(cb, "restored_step", None) is not None
        for cb in getattr(trainer, "callbacks", ())
    )
