"""TensorBoard: write logs and parameter histograms as TensorBoard event files (tensorboardX)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import nnx
from callbacks.base import Callback


class TensorBoard(Callback):
    """Writes the logs as TensorBoard scalars, in ``log_dir/train`` and ``log_dir/validation``.

    Epoch logs are written at step ``epoch`` with the tag ``epoch_<name>``: ``loss``, metrics,
    the learning rate (``learning_rate``, or a changed ``lr_scale``) under ``train``, and ``val_<name>`` as
    ``epoch_<name>`` under ``validation``, so TensorBoard draws both runs on one chart. With
    ``update_freq=N`` the batch logs are also written every N training batches as
    ``batch_<name>`` at the global batch number (the logs are fetched from the device only at
    those batches); with ``"epoch"`` no batch hook is defined, so the Trainer adds no host sync
    per batch. With ``histogram_freq=N`` a histogram of every
    ``nnx.Param`` is written every N epochs, tagged with its path (``"layers/0/kernel"``).

    Args:
      log_dir: the directory to write to; view it with ``tensorboard --logdir log_dir``.
      update_freq: ``"epoch"``, or an int: write batch logs every that many batches.
      histogram_freq: write parameter histograms every that many epochs (0: never).
    """

    def __init__(
        self, log_dir: str | os.PathLike = "logs", update_freq: str | int = "epoch",
        histogram_freq: int = 0,
    ):
        super().__init__()
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1
        ):
            raise ValueError(
                f"TensorBoard: update_freq must be 'epoch', 'batch' or an int >= 1, "
                f"got {update_freq!r}"
            )
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ValueError(f"TensorBoard: histogram_freq must be an int >= 0, got {histogram_freq!r}")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.histogram_freq = histogram_freq
        self._writers: dict[str, Any] = {}
        self._batches_seen = 0

    # With update_freq=N the batch logs are fetched only every N batches (trainer.batch_logs()).
    pulls_batch_logs = True

    def overrides(self, hook: str) -> bool:
        """Batch hooks only when ``update_freq`` is a number of batches."""
        if hook == "on_train_batch_end":
            return self.update_freq != "epoch"
        return super().overrides(hook)

    def _writer(self, run: str) -> Any:
        """The tensorboardX ``SummaryWriter`` of ``run`` (tensorboardX is imported on first use)."""
        if run not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[run] = SummaryWriter(logdir=os.path.join(self.log_dir, run))
        return self._writers[run]

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        step = getattr(self.trainer, "step", 0)
        self._batches_seen = int(step) if step is not None else 0

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._batches_seen += 1
        if self.update_freq == "epoch" or self._batches_seen % self.update_freq:
            return
        if logs is None:
            batch_logs = getattr(self.trainer, "batch_logs", None)
            logs = batch_logs() if callable(batch_logs) else {}
        writer = self._writer("train")
        for name, value in logs.items():
            writer.add_scalar(f"batch_{name}", float(value), self._batches_seen)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        if "learning_rate" not in logs and "lr_scale" not in logs:
            logs.update(self._rate())
        for name, value in sorted(logs.items()):
            run = "validation" if name.startswith("val_") else "train"
            tag = f"epoch_{name.removeprefix('val_')}"
            self._writer(run).add_scalar(tag, float(value), epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._write_histograms(epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _rate(self) -> dict[str, float]:
        """The learning rate as the Trainer logs it (``learning_rate``, or a changed
        ``lr_scale``), for trainers whose logs lack it."""
        lr = getattr(self.trainer, "learning_rate", None)
        if lr is not None:
            return {"learning_rate": float(lr)}
        scale = getattr(self.trainer, "lr_scale", None)
        return {} if scale is None or float(scale) == 1.0 else {"lr_scale": float(scale)}

    def _write_histograms(self, epoch: int) -> None:
        writer = self._writer("train")
        for path, param in nnx.state(self.model, nnx.Param).flat_state():
            values = np.asarray(param.value)
            if values.size:
                writer.add_histogram("/".join(map(str, path)), values, epoch)
