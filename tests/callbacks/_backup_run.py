"""The training run of the BackupAndRestore kill test; ``python _backup_run.py`` runs it alone.

A Dropout model on 20 shuffled examples in batches of 4 (5 steps per epoch) for 2 epochs, backed
up every 3 steps (after steps 3, 6 and 9: not a multiple of the epoch length).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import optax

import nnx
from callbacks import BackupAndRestore, Callback
from trainer import Trainer

SAVE_FREQ = 3
EPOCHS = 2


def _numpy_init(key, shape, dtype=np.float32):
    # fixed weights from numpy: no initializer to compile in each process
    return np.random.default_rng(sum(shape)).normal(0.0, 0.5, size=shape).astype(dtype)


class Net(nnx.Module):
    def __init__(self) -> None:
        rngs = nnx.Rngs(params=0, dropout=1)
        self.l1 = nnx.Linear(3, 8, kernel_init=_numpy_init, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, kernel_init=_numpy_init, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.l1(x))))


def params(model: nnx.Module) -> list[np.ndarray]:
    return [np.array(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param).to_pure_dict())]


class BlockAfter(Callback):
    """After step ``step``: waits for the backups being written, writes ``ready``, then sleeps
    until the process is killed. Inert when ``step`` is None (the same callbacks in every run)."""

    def __init__(self, step: int | None, ready: str | None, backup: BackupAndRestore) -> None:
        super().__init__()
        self.step, self.ready, self.backup = step, ready, backup

    def on_train_batch_end(self, batch, logs=None):
        if self.step is not None and self.trainer.step == self.step:
            self.backup.wait_until_finished()
            with open(self.ready + ".tmp", "w") as f:
                f.write(f"{self.trainer.epoch} {batch}")
            os.replace(self.ready + ".tmp", self.ready)  # the parent never reads a half-written file
            time.sleep(600)


def train(backup_dir: str, block_after: int | None = None, ready: str | None = None, mesh: str | None = None):
    """``(initial params, final params, the step restored from or None)``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model = Net()
    initial = params(model)
    backup = BackupAndRestore(backup_dir, save_freq=SAVE_FREQ)
    trainer = Trainer(model, optax.adam(0.05), loss="mse", seed=0, mesh=mesh)
    trainer.fit(
        x, y, batch_size=4, epochs=EPOCHS, shuffle=True, verbose=0,
        callbacks=[backup, BlockAfter(block_after, ready, backup)],
    )
    return initial, params(model), backup.restored_step


def kill_when_ready(process: subprocess.Popen, ready: str | os.PathLike, seconds: float, log: Any = None) -> None:
    """SIGKILL ``process`` once it has written ``ready`` (it blocks there), and reap it; an
    AssertionError when it ends first or takes longer than ``seconds`` (``log``: its output)."""
    try:
        deadline = time.monotonic() + seconds
        while not os.path.exists(ready):
            shown = f":\n{log.read_text()}" if log is not None else ""
            assert process.poll() is None, f"the run ended before blocking{shown}"
            assert time.monotonic() < deadline, f"the run did not block within {seconds} s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def main() -> None:
    # verbose=0 prints nothing; the library's INFO messages ("resuming ...") go to stdout here
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir")
    parser.add_argument("--block-after", type=int, default=None)
    parser.add_argument("--ready", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--mesh", default=None, help="'auto': data parallel over every device")
    args = parser.parse_args()
    _, final, restored = train(args.backup_dir, args.block_after, args.ready, args.mesh)
    if args.out:
        np.savez(args.out, *final, restored=-1 if restored is None else restored)


if __name__ == "__main__":
    main()
