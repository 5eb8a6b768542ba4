"""What the callbacks that write checkpoints share: their ``CheckpointStore`` and how ``fit``'s
exceptional exit and ``close`` finish its writes."""

from __future__ import annotations

import logging
from typing import Any

from callbacks.base import Callback
from checkpointing import CheckpointStore, CheckpointWriteError

logger = logging.getLogger("callbacks")


class StoreCallback(Callback):
    """A callback writing checkpoints through ``self._store`` (set by the subclass)."""

    saves_checkpoints = True
    provides_checkpoints = True
    _store: CheckpointStore

    def _shardings(self) -> Any:
        """Where the trainer wants the arrays of a checkpoint read (None: one device)."""
        get = getattr(self.trainer, "checkpoint_shardings", None)
        return get() if callable(get) else None

    def on_train_exception(self, error: BaseException) -> None:
        """``fit`` is leaving by ``error``: finish the write in flight and keep what is on disk
        (a failure of that write is logged, not raised, so that ``error`` is what ``fit``
        raises)."""
        try:
            self._store.wait()
        except CheckpointWriteError as failure:
            logger.error("%s", failure)

    def close(self) -> None:
        """Finish the write in flight and release orbax's resources (re-created on next use)."""
        self._store.close()
