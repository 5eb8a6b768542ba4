"""LearningRateScheduler: set the learning rate from a function of the epoch at each epoch."""

from __future__ import annotations

import numbers
from collections.abc import Callable

from callbacks.base import Callback

_FIX = (
    "build the optimizer with optax.inject_hyperparams, e.g. "
    "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)"
)


class LearningRateScheduler(Callback):
    """Sets ``trainer.learning_rate = schedule(epoch, lr)`` at the beginning of every epoch.

    The rate changes without recompiling. It needs the absolute rate, so the optimizer must be
    built with ``optax.inject_hyperparams``; otherwise ``on_train_begin`` raises.

    Args:
      schedule: ``schedule(epoch, lr) -> float``, with ``epoch`` counted from 0 and ``lr`` the
        current rate.
      verbose: 1 prints the rate set at each epoch.

    Example::

      decay = LearningRateScheduler(lambda epoch, lr: lr if epoch < 10 else lr * 0.9)
      tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    """

    changes_learning_rate = True

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"LearningRateScheduler: schedule must be a callable (epoch, lr) -> lr, "
                f"got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.verbose = verbose

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        if self.trainer.learning_rate is None:
            raise ValueError(
                "LearningRateScheduler needs trainer.learning_rate, which is None because the "
                f"optimizer has no injected learning_rate hyperparameter; fix: {_FIX}"
            )

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        lr = self.schedule(epoch, float(self.trainer.learning_rate))
        if not isinstance(lr, numbers.Real) and not _is_real_scalar(lr):
            raise TypeError(
                f"LearningRateScheduler: schedule({epoch}, lr) must return a float, "
                f"got {type(lr).__name__}: {lr!r}"
            )
        self.trainer.learning_rate = float(lr)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr):.6g}.")


def _is_real_scalar(x: object) -> bool:
    """Whether ``x`` is a 0-d real array (numpy or jax), which ``float()`` reads exactly."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    return shape == () and getattr(dtype, "kind", None) in ("f", "i", "u")
