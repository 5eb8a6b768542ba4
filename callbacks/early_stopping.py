"""EarlyStopping: stop training when a monitored log has stopped improving."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import nnx
from callbacks._monitor import improves, monitored_value, resolve_mode, warn_missing_monitor
from callbacks.base import ResumableCallback

# The weights EarlyStopping keeps: every Variable except RNG state and sown intermediates.
_WEIGHTS = nnx.Not(nnx.Any(nnx.RngState, nnx.Intermediate))


def _path_name(path: tuple[Any, ...]) -> str:
    return "/".join(map(str, path))


def _dtype(variable: Any) -> Any:
    return getattr(variable.get_value(), "dtype", None)


class EarlyStopping(ResumableCallback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    With ``restore_best_weights=True`` the model's Variables (all but RNG state) are copied at the
    best epoch, on the device and independent of the Trainer's donated buffers, and written back
    with ``nnx.update`` at the end of training, whether or not it stopped early.
    A NaN value of ``monitor`` never counts as an improvement (nor becomes the best).

    Args:
      monitor: the log key to watch, e.g. ``"val_loss"``.
      min_delta: the smallest change that counts as an improvement.
      patience: epochs without improvement after which training stops.
      verbose: 1 prints a line when stopping and when restoring weights.
      mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracy-like names, else ``"min"``).
      baseline: a value to beat; epochs that improve on the best so far but not on the baseline
        still count towards ``patience``.
      restore_best_weights: restore the weights of the best epoch at the end of training.
      start_from_epoch: epochs to wait before watching at all (a warm-up).

    Example::

      stop = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
      trainer = Trainer(model, optax.adam(1e-3), callbacks=[stop])
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        super().__init__()
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        if start_from_epoch < 0:
            raise ValueError(f"EarlyStopping: start_from_epoch must be >= 0, got {start_from_epoch}")
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = resolve_mode("EarlyStopping", monitor, mode)
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch

    def reset_state(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: nnx.State | None = None
        self._pending_weights: dict[str, Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        current = monitored_value(logs, self.monitor)
        if current is None:
            warn_missing_monitor(self, "EarlyStopping is conditioned on", logs, stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None and self._pending_weights is None:
            self.best_weights = self._copy_weights()  # so there is always something to restore
        self.wait += 1
        if improves(self.mode, current, self.best, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights, self._pending_weights = self._copy_weights(), None
            if self.baseline is None or improves(self.mode, current, self.baseline, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if not self.restore_best_weights:
            return
        weights = self._weights_to_restore()
        if weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            nnx.update(self.model, weights)

    def _copy_weights(self) -> nnx.State:
        return jax.tree.map(jnp.copy, nnx.state(self.model, _WEIGHTS))

    def _weights_to_restore(self) -> nnx.State | None:
        if self.best_weights is not None:
            return jax.tree.map(jnp.copy, self.best_weights)  # the model may donate what it gets
        if self._pending_weights is None:
            return None
        current = dict(nnx.state(self.model, _WEIGHTS).flat_state())
        by_name = {_path_name(path): path for path in current}
        missing = sorted(set(self._pending_weights) - set(by_name))
        if missing:
            raise ValueError(
                f"EarlyStopping: the checkpointed best weights name {missing}, which the model "
                f"does not have (it has {sorted(by_name)})"
            )
        return nnx.State.from_flat_path(  # in the model's dtypes, as checkpoints are loaded
            (by_name[name], current[by_name[name]].copy(jnp.asarray(value, _dtype(current[by_name[name]]))))
            for name, value in self._pending_weights.items()
        )

    def state_dict(self) -> dict[str, Any]:
        """``wait``, ``best``, ``best_epoch``, ``stopped_epoch``, and the best weights (a pure dict)."""
        state: dict[str, Any] = {
            "wait": self.wait,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
        }
        if self.best_weights is not None:
            state["best_weights"] = self.best_weights.to_pure_dict()
        elif self._pending_weights is not None:
            state["best_weights"] = nnx.State.from_flat_path(
                (tuple(name.split("/")), value) for name, value in self._pending_weights.items()
            ).to_pure_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; the next ``on_train_begin`` keeps it."""
        self.wait = int(state["wait"])
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state.get("stopped_epoch", 0))
        self.best_weights = None
        weights = state.get("best_weights")
        self._pending_weights = None if weights is None else {
            _path_name(path): value for path, value in nnx.State.flatten_mapping(weights).items()
        }
        self.keep_loaded_state()
