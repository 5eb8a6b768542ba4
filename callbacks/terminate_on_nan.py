"""TerminateOnNaN: stop training as soon as a step's loss is NaN or infinite."""

from __future__ import annotations

import math

from callbacks.base import Callback


class TerminateOnNaN(Callback):
    """Stops training at the first non-finite loss (Keras semantics), and says why.

    It stops when ``loss`` in the batch or epoch logs is NaN or infinite, or when the logs count
    a non-finite step (``nonfinite_steps``: the Trainer skips such steps and leaves them out of
    the running loss, so the loss itself stays finite). It sets ``trainer.stop_training`` and
    ``trainer.stop_reason = "terminate_on_nan"`` (``BackupAndRestore`` then keeps its backup).
    It reads the logs after every training batch, so it makes the Trainer fetch batch logs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stopped = False

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._stopped = False

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._check(f"Batch {batch}", logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._check(f"Epoch {epoch + 1}", logs)

    def _check(self, where: str, logs: dict[str, float] | None) -> None:
        if self._stopped:
            return  # said once already (at the batch; the epoch's end would say it again)
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.say(f"{where}: invalid loss {float(loss)}, terminating training")
        elif logs.get("nonfinite_steps"):
            first = logs.get("first_nonfinite_step")
            at = "" if first is None else f" (first_nonfinite_step={int(first)})"
            self.say(f"{where}: {int(logs['nonfinite_steps'])} non-finite step(s){at}, terminating training")
        else:
            return
        self._stopped = True
        self.trainer.stop_training = True
        self.trainer.stop_reason = "terminate_on_nan"
