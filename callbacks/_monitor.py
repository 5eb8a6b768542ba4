"""Shared by EarlyStopping, ReduceLROnPlateau and ModelCheckpoint: which direction of a
monitored log improves (a NaN never does)."""

from __future__ import annotations

import math
import warnings
from typing import Any

# Parts of a metric name that mark it as "higher is better" when mode="auto".
_MAXIMIZED_NAMES = ("acc", "auc", "precision", "recall", "f1", "iou")


def resolve_mode(owner: str, monitor: str, mode: str) -> str:
    """'min' or 'max' for ``monitor``: ``mode`` itself, or guessed from the name when 'auto'.

    Args:
      owner: the callback's name, for the error message.
      monitor: the log key, e.g. ``"val_loss"`` or ``"val_accuracy"``.
      mode: ``"auto"``, ``"min"`` or ``"max"``.
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_").lower()
    if name != "loss" and any(part in name for part in _MAXIMIZED_NAMES):
        return "max"
    return "min"


def improves(mode: str, current: float, reference: float | None, min_delta: float) -> bool:
    """Whether ``current`` beats ``reference`` by more than ``min_delta``.

    A NaN ``current`` never improves (so a NaN first epoch never becomes the best); any other
    value improves on a missing (None) or NaN ``reference``.
    """
    if math.isnan(current):
        return False
    if reference is None or math.isnan(reference):
        return True
    if mode == "min":
        return current < reference - abs(min_delta)
    return current > reference + abs(min_delta)


def monitored_value(logs: dict[str, float] | None, monitor: str) -> float | None:
    """The float under ``monitor`` in ``logs``, or None when absent (a NaN is returned as it
    is: ``improves`` never counts it)."""
    if not logs or monitor not in logs:
        return None
    return float(logs[monitor])


def warn_missing_monitor(callback: Any, opening: str, logs: dict[str, float] | None,
                         closing: str = "", stacklevel: int = 3) -> None:
    """Warn once per callback that ``callback.monitor`` is not in ``logs``; the message is
    ``opening`` + ``monitor=..., which is not in the logs; available keys: [...]`` + ``closing``."""
    if getattr(callback, "_warned_missing", False):
        return
    callback._warned_missing = True
    warnings.warn(
        f"{opening} monitor={callback.monitor!r}, which is not in the logs; "
        f"available keys: {sorted(logs or {})}{closing}",
        stacklevel=stacklevel,
    )
