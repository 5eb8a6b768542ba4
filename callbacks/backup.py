"""BackupAndRestore: back up a run as it trains, and resume it automatically after a crash."""

from __future__ import annotations

import logging
import os
from typing import Any

from callbacks._stored import StoreCallback
from checkpointing import CheckpointStore, NonFiniteStateError

logger = logging.getLogger("callbacks")

# The stop reasons (``trainer.stop_reason``) of non-finite steps: the backup is kept and no
# longer updated (the run did not finish; its state at the stop is no better than the backup).
_NONFINITE_STOPS = ("nonfinite", "terminate_on_nan")


class BackupAndRestore(StoreCallback):
    """Backs the run up to ``backup_dir``; a later ``fit`` with a backup there resumes from it.

    Keras semantics: whenever ``fit`` starts and ``backup_dir`` holds a backup, the Trainer loads
    it before ``on_train_begin`` (no flag needed) and training continues from the saved epoch and
    step; a run that completes (including one stopped by ``EarlyStopping`` or ``max_steps``)
    deletes the backup when ``delete_checkpoint``. A run stopped by Ctrl-C writes a last backup
    and keeps it; a run stopped by non-finite steps (``TerminateOnNaN``, or the Trainer's
    ``max_consecutive_nonfinite``) keeps its last backup as it was, from before the stop, and
    a state holding NaN or infinite values is never backed up (the save is skipped with a
    warning, logger ``"callbacks"``). When ``fit`` dies on an exception, the backup being
    written is finished (``on_train_exception``; the next ``fit`` also waits for it before
    reading), so rerunning the same ``fit`` resumes from it. Backups are orbax checkpoints of
    ``Trainer.checkpoint_state()``: the model's State (parameters, BatchNorm statistics, the
    Rngs of Dropout), the optimizer state (with the learning rate or ``lr_scale``), the step, the
    epoch and the batch inside it, the shuffle key, the running metrics of the epoch, and the
    state of every callback of the run.

    What the position in the data means depends on the source:

    - arrays: the epoch's shuffle order is a function of the restored key and epoch, and the
      next batch is taken from the restored batch index, so a run killed at any step and
      resumed ends with parameters identical to an uninterrupted run.
    - grain ``IterDataset`` / ``DatasetIterator`` / ``DataLoader`` and any iterable whose
      iterators have ``get_state()`` / ``set_state()``: the iterator state after the last
      trained batch is saved and set on the new iterator, so the resumed run reads exactly the
      batches it had not trained on (shuffle order included). Such re-iterable sources
      (``MapDataset``, ``DataLoader``) start the epoch's iterator from the saved state.
    - other re-iterable sources (a list of batches, a custom iterable): the epoch's iterator is
      restarted and the batches already trained in it are read and skipped, which is exact
      when the iterable yields the same batches each time.
    - other one-shot iterators (generators): model, optimizer, step, epoch and batch index are
      restored, but the iterator cannot be rewound or fast-forwarded; the resumed run trains on
      whatever the new iterator yields for the rest of the epoch.

    Args:
      backup_dir: the directory of the backup (used only by this run; deleted on completion).
      save_freq: ``"epoch"`` (at the end of every epoch) or an int: every that many batches.
      double_checkpoint: keep the previous backup too, as a fallback if the newest cannot be read
        (orbax already never replaces a good backup with a half-written one).
      delete_checkpoint: delete the backup when training completes.

    Example::

      backup = BackupAndRestore("/tmp/backup", save_freq=100)
      trainer.fit(x, y, epochs=10, callbacks=[backup])  # rerun the same line after a crash
    """

    # Batch-frequency backups read no logs, so they cause no per-batch host sync.
    pulls_batch_logs = True
    restores_automatically = True

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ):
        super().__init__()
        if not backup_dir:
            raise ValueError("BackupAndRestore: backup_dir must be a directory path, got an empty value")
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ValueError(
                f"BackupAndRestore: save_freq must be 'epoch' or an int >= 1, got {save_freq!r}"
            )
        self.backup_dir = os.path.abspath(os.fspath(backup_dir))
        self.save_freq = save_freq
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self.restored_step: int | None = None
        self._store = CheckpointStore(
            self.backup_dir, max_to_keep=2 if double_checkpoint else 1, owner="BackupAndRestore"
        )
        self._batches_since_save = 0
        self._saved_step: int | None = None
        self._skipping = False  # a non-finite state was skipped (warned) since the last backup

    def overrides(self, hook: str) -> bool:
        """Batch hooks only when ``save_freq`` is a number of batches."""
        if hook == "on_train_batch_end":
            return self.save_freq != "epoch"
        return super().overrides(hook)

    def latest_state(self) -> dict[str, Any] | None:
        """The newest usable backup as ``trainer.load_checkpoint_state`` takes it, or None.

        Sets ``restored_step`` (None when there is no backup). The Trainer calls this when
        ``fit`` starts. A backup that fails to load or to check is skipped with a warning for
        the one before (``double_checkpoint``); when none can be used,
        ``checkpointing.CheckpointReadError`` names the directory and each failure.
        """
        self.restored_step = None
        found = self._store.load(shardings=self._shardings())
        if found is None:
            return None
        step, tree = found
        self.restored_step = step
        self.say(
            f"BackupAndRestore: resuming from the backup at step {step} (epoch {tree.get('epoch')}, "
            f"batch {tree.get('batch')}) in {self.backup_dir}."
        )
        return tree

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._batches_since_save = 0
        self._saved_step, self._skipping = None, False

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq and not self._stopping_on_nonfinite():
            self._batches_since_save = 0
            self.save()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.save_freq == "epoch" and not self._stopping_on_nonfinite():
            self.save()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if getattr(self.trainer, "interrupted", False):
            if self._saved_step != int(self.trainer.step):
                self.save()  # Ctrl-C: keep a backup of the last completed step
            self._store.wait()
        elif self._stopping_on_nonfinite() or not self.delete_checkpoint:
            self._store.wait()
        else:
            self._store.delete_all()

    def _stopping_on_nonfinite(self) -> bool:
        """Whether the run is stopping because of non-finite steps: ``TerminateOnNaN`` or the
        Trainer's ``max_consecutive_nonfinite``, read from ``trainer.stop_reason`` (the only
        place callbacks read it; a Trainer without it never stops for that reason)."""
        return getattr(self.trainer, "stop_reason", None) in _NONFINITE_STOPS

    def save(self) -> int | None:
        """Write a backup of the Trainer now (in the background); returns its step, or None
        when the state holds NaN or infinite values (nothing is written; a warning, once until
        the next backup, names the step, and the previous backup is kept)."""
        step = int(self.trainer.step)
        try:
            self._store.save(step, self.trainer.checkpoint_state())
        except NonFiniteStateError as error:
            if not self._skipping:
                logger.warning("%s Later non-finite states are skipped silently.", error)
            self._skipping = True
            return None
        self._saved_step, self._skipping = step, False
        return step

    def wait_until_finished(self) -> None:
        """Block until the backups being written are on disk."""
        self._store.wait()

    def steps(self) -> list[int]:
        """The steps of the backups on disk, oldest first."""
        return self._store.steps()
