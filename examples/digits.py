"""Train a small MLP on scikit-learn's digits with the Trainer, report validation accuracy and
keep the best checkpoint (orbax) under ``checkpoints/digits``.

Run: ``python examples/digits.py [checkpoint_dir]`` (or ``make demo``).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import optax
from sklearn.datasets import load_digits

import nnx
from callbacks import ModelCheckpoint
from trainer import Trainer


class MLP(nnx.Module):
    """64 -> 128 -> 10 with ReLU and Dropout."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.dropout(jax.nn.relu(self.hidden(x))))


def main() -> None:
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.data))
    x = (digits.data[order] / 16.0).astype(np.float32)
    y = digits.target[order].astype(np.int32)

    model = MLP(nnx.Rngs(params=0, dropout=1))
    trainer = Trainer(model, optax.adam(1e-3), metrics=["accuracy"])
    directory = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/digits")
    # overwrite=True: each run of the demo replaces the previous run's checkpoint
    checkpoint = ModelCheckpoint(
        directory, monitor="val_accuracy", save_best_only=True, max_to_keep=1, overwrite=True
    )
    history = trainer.fit(x, y, epochs=15, validation_split=0.2, callbacks=[checkpoint])
    print(f"validation accuracy: {history.history['val_accuracy'][-1]:.4f}")
    print(f"best checkpoint: {directory} (steps {checkpoint.manager.all_steps()})")


if __name__ == "__main__":
    main()
