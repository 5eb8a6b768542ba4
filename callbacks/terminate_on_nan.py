"""TerminateOnNaN: stop training as soon as the loss is NaN or infinite."""

from __future__ import annotations

import math

from callbacks.base import Callback


class TerminateOnNaN(Callback):
    """Sets ``trainer.stop_training`` when ``loss`` in batch or epoch logs is NaN or infinite.

    It reads the loss after every training batch, so it makes the Trainer fetch batch logs.
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._check(f"Batch {batch}", logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._check(f"Epoch {epoch + 1}", logs)

    def _check(self, where: str, logs: dict[str, float] | None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"{where}: invalid loss {float(loss)}, terminating training")
            self.trainer.stop_training = True
