"""ProgressBar: a tqdm bar per epoch (verbose=1), one line per epoch (verbose=2).

The bar shows steps, rate, ETA and the running loss and metrics. It does not make the Trainer
fetch logs after every batch: it asks ``trainer.batch_logs()`` only when it redraws (at most
every ``refresh_seconds``). When the output is not a terminal it prints plain lines instead of
redrawing, at most one every ``line_seconds`` and one at each epoch end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

from callbacks.base import Callback


def format_logs(logs: dict[str, float] | None) -> str:
    """``loss: 0.1234 - accuracy: 0.9876`` from a logs dict."""
    return " - ".join(f"{k}: {v:.4g}" for k, v in (logs or {}).items())


class ProgressBar(Callback):
    """Progress display for fit, evaluate and predict.

    Args:
      verbose: 1 for a bar per epoch, 2 for one line per epoch, 0 for nothing.
      file: where to write (default ``sys.stdout``).
      refresh_seconds: the least time between two reads of running logs for the bar.
      line_seconds: the least time between two plain lines when ``file`` is not a terminal.
    """

    pulls_batch_logs = True  # the Trainer may pass logs=None; the bar fetches when it redraws
    fusable_batch_hooks = True  # a display: counting steps after a fused block is as good

    def __init__(
        self,
        verbose: int = 1,
        file: TextIO | None = None,
        refresh_seconds: float = 0.5,
        line_seconds: float = 10.0,
    ) -> None:
        super().__init__()
        self.verbose = int(verbose)
        self.file = file
        self.refresh_seconds = refresh_seconds
        self.line_seconds = line_seconds
        self._bar: Any = None
        self._in_fit = False
        self._epoch = 0
        self._seen = 0
        self._start = 0.0
        self._last_fetch = 0.0
        self._last_line = 0.0
        self._mode = ""

    # -- helpers -------------------------------------------------------------------------
    @property
    def _out(self) -> TextIO:
        return self.file if self.file is not None else sys.stdout

    def _tty(self) -> bool:
        isatty = getattr(self._out, "isatty", None)
        return bool(isatty and isatty())

    def _steps(self) -> int | None:
        return self.params.get("steps")

    def _open(self, desc: str) -> None:
        self._seen, self._start = 0, time.monotonic()
        self._last_fetch = self._last_line = self._start
        if self.verbose == 1 and self._tty():
            self._bar = tqdm(
                total=self._steps(), desc=desc, unit="step", file=self._out, leave=True,
                dynamic_ncols=True, mininterval=0.1,
            )
        else:
            self._bar = None
        self._desc = desc

    def _advance(self, logs: dict[str, float] | None) -> None:
        self._seen += 1
        now = time.monotonic()
        if self._bar is not None:
            if now - self._last_fetch >= self.refresh_seconds:
                self._last_fetch = now
                current = logs if logs is not None else self.trainer.batch_logs()
                self._bar.set_postfix_str(format_logs(current), refresh=False)
            self._bar.update(1)
        elif self.verbose == 1 and now - self._last_line >= self.line_seconds:
            self._last_line = now
            current = logs if logs is not None else self.trainer.batch_logs()
            total = self._steps()
            where = f"{self._seen}/{total}" if total else f"{self._seen}"
            print(f"{self._desc} - step {where} - {format_logs(current)}", file=self._out, flush=True)

    def _close(self, logs: dict[str, float] | None) -> None:
        elapsed = time.monotonic() - self._start
        if self._bar is not None:
            self._bar.set_postfix_str(format_logs(logs), refresh=False)
            self._bar.close()
            self._bar = None
        elif self.verbose in (1, 2):
            line = f"{self._desc} - {self._seen} steps - {elapsed:.1f}s"
            if logs:
                line += f" - {format_logs(logs)}"
            print(line, file=self._out, flush=True)

    # -- fit -----------------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._in_fit = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self._in_fit = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._open(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}")

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._advance(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._close(logs)

    # -- evaluate / predict ------------------------------------------------------------
    def on_test_begin(self, logs: dict[str, float] | None = None) -> None:
        if not self._in_fit:
            self._open("Evaluate")

    def on_test_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if not self._in_fit:
            self._advance(logs)

    def on_test_end(self, logs: dict[str, float] | None = None) -> None:
        if not self._in_fit:
            self._close(logs)

    def on_predict_begin(self, logs: dict[str, float] | None = None) -> None:
        self._open("Predict")

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._advance({})

    def on_predict_end(self, logs: dict[str, float] | None = None) -> None:
        self._close(None)
