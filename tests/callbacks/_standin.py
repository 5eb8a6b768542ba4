"""A stand-in for the Trainer's callback interface, with a real nnx model (no compilation)."""

from __future__ import annotations

import jax.numpy as jnp

import nnx
from callbacks import Callback, CallbackList


class TinyModel(nnx.Module):
    """Two Params, a BatchStat and an Rngs: enough for weight copies and histograms."""

    def __init__(self) -> None:
        self.kernel = nnx.Param(jnp.zeros((3, 2)))
        self.bias = nnx.Param(jnp.zeros((2,)))
        self.mean = nnx.BatchStat(jnp.zeros((2,)))
        self.rngs = nnx.Rngs(0)


class StandInTrainer:
    """The attributes callbacks use: model, stop_training, step, epoch, learning_rate, lr_scale."""

    def __init__(self, model: nnx.Module, learning_rate: float | None = 1e-3) -> None:
        self.model = model
        self.stop_training = False
        self.step = 0
        self.epoch = 0
        self.learning_rate = learning_rate
        self.lr_scale = 1.0
        self.history = None


def set_weights(model: TinyModel, value: float) -> None:
    """Fill every Param and the BatchStat with ``value`` (new arrays, as a train step would)."""
    model.kernel.value = jnp.full((3, 2), value)
    model.bias.value = jnp.full((2,), value)
    model.mean.value = jnp.full((2,), -value)


def run_epochs(
    trainer: StandInTrainer, callbacks: list[Callback], epoch_logs: list[dict[str, float]],
    steps_per_epoch: int = 1, on_epoch=None,
) -> int:
    """Drive the hooks like ``fit`` would; returns the number of epochs run.

    ``on_epoch(epoch)`` runs before an epoch's end hooks (a stand-in for training the model);
    batch logs carry the epoch's loss when it has one.
    """
    hooks = CallbackList(callbacks, trainer=trainer)
    hooks.set_params({"epochs": len(epoch_logs), "steps": steps_per_epoch, "verbose": 0})
    hooks.on_train_begin()
    epochs_run = 0
    for epoch, logs in enumerate(epoch_logs):
        trainer.epoch = epoch
        hooks.on_epoch_begin(epoch)
        for batch in range(steps_per_epoch):
            hooks.on_train_batch_begin(batch)
            trainer.step += 1
            batch_logs = {k: v for k, v in logs.items() if not k.startswith("val_")}
            hooks.on_train_batch_end(batch, batch_logs)
        if on_epoch is not None:
            on_epoch(epoch)
        hooks.on_epoch_end(epoch, dict(logs))
        epochs_run += 1
        if trainer.stop_training:
            break
    hooks.on_train_end()
    return epochs_run


class Regressor(nnx.Module):
    """A 3 -> 1 linear model for end-to-end runs of ``Trainer.fit`` (one small compile)."""

    def __init__(self) -> None:
        self.kernel = nnx.Param(jnp.zeros((3, 1)))
        self.bias = nnx.Param(jnp.zeros((1,)))

    def __call__(self, x):
        return x @ self.kernel.value + self.bias.value


def regression_data(n: int = 32):
    """``n`` examples of y = x . (1, -2, 0.5) + 0.3, float32."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    return x, y


def counting_trainer(*args, **kwargs):
    """A real ``Trainer`` whose ``traces`` counts how often its train step is traced (compiled)."""
    from trainer.trainer import Trainer

    class CountingTrainer(Trainer):
        traces = 0

        def train_step(self, state, batch):
            type(self).traces += 1
            return super().train_step(state, batch)

    return CountingTrainer(*args, **kwargs)
