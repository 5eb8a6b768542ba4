"""ReduceLROnPlateau: lower the learning rate when a monitored log has stopped improving."""

from __future__ import annotations

from typing import Any

from callbacks._monitor import improves, monitored_value, resolve_mode, warn_missing_monitor
from callbacks.base import ResumableCallback


class ReduceLROnPlateau(ResumableCallback):
    """Multiplies the learning rate by ``factor`` after ``patience`` epochs without improvement.

    The rate changes between steps without recompiling. It sets ``trainer.learning_rate`` when the
    optimizer was built with ``optax.inject_hyperparams``; otherwise it scales
    ``trainer.lr_scale``, the multiplier the Trainer chains after the optimizer (1.0 at the
    start), and ``min_lr`` then bounds that multiplier: ``min_lr=1e-3`` allows at most a
    1000-fold reduction of the optimizer's own rate.

    A NaN value of ``monitor`` never counts as an improvement (nor becomes the best).

    Args:
      monitor: the log key to watch, e.g. ``"val_loss"``.
      factor: the multiplier applied to the rate, in (0, 1).
      patience: epochs without improvement before the rate is lowered.
      verbose: 1 prints a line each time the rate changes.
      mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracy-like names, else ``"min"``).
      min_delta: the smallest change that counts as an improvement.
      cooldown: epochs to wait after a reduction before counting again.
      min_lr: the rate (or multiplier, see above) is never lowered below this.
    """

    changes_learning_rate = True

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ):
        super().__init__()
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        if patience < 0:
            raise ValueError(f"ReduceLROnPlateau: patience must be >= 0, got {patience}")
        if cooldown < 0:
            raise ValueError(f"ReduceLROnPlateau: cooldown must be >= 0, got {cooldown}")
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.verbose = verbose
        self.mode = resolve_mode("ReduceLROnPlateau", monitor, mode)
        self.min_delta = abs(min_delta)
        self.cooldown = cooldown
        self.min_lr = min_lr

    def reset_state(self) -> None:
        self.wait = 0
        self.cooldown_counter = 0
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        current = monitored_value(logs, self.monitor)
        if current is None:
            warn_missing_monitor(self, "ReduceLROnPlateau is conditioned on", logs)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if improves(self.mode, current, self.best, self.min_delta):
            self.best, self.wait = current, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        name, old = self._rate()
        if old > self.min_lr:
            new = max(old * self.factor, self.min_lr)
            setattr(self.trainer, name, new)
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: ReduceLROnPlateau setting {name} to {new:.6g}.")
            self.cooldown_counter, self.wait = self.cooldown, 0

    def _rate(self) -> tuple[str, float]:
        """The attribute of the Trainer that holds the rate, and its value."""
        lr = self.trainer.learning_rate
        if lr is not None:
            return "learning_rate", float(lr)
        return "lr_scale", float(self.trainer.lr_scale)

    def state_dict(self) -> dict[str, Any]:
        """``wait``, ``best`` and ``cooldown_counter`` (the rate itself is the Trainer's)."""
        return {"wait": self.wait, "best": self.best, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; the next ``on_train_begin`` keeps it."""
        self.wait = int(state["wait"])
        self.best = None if state["best"] is None else float(state["best"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.keep_loaded_state()
