"""History: records the logs of every epoch; ``Trainer.fit`` returns it."""

from __future__ import annotations

from typing import Any

from callbacks.base import ResumableCallback


class History(ResumableCallback):
    """Per-epoch logs as lists: ``history.history['loss'][i]`` is epoch ``history.epoch[i]``.

    The Trainer adds one to every ``fit`` call (first in the list) and returns it. It is saved
    in checkpoints: a resumed ``fit`` returns the history of the whole run, the epochs before the
    interruption included.

    Example::

      >>> history = trainer.fit(x, y, epochs=3)
      >>> len(history.history["loss"])
      3
    """

    def reset_state(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"

    def state_dict(self) -> dict[str, Any]:
        """The logs recorded so far."""
        return {"history": {k: list(v) for k, v in self.history.items()}, "epoch": list(self.epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; the next ``on_train_begin`` keeps it."""
        self.history = {k: [float(x) for x in v] for k, v in state.get("history", {}).items()}
        self.epoch = [int(e) for e in state.get("epoch", [])]
        self.keep_loaded_state()
