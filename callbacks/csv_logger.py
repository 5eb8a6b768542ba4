"""CSVLogger: write one CSV row per epoch with the epoch number and the epoch's logs."""

from __future__ import annotations

import csv
import os
from typing import IO, Any

from callbacks.base import Callback


class CSVLogger(Callback):
    """Writes ``epoch`` and the sorted log keys as one CSV row per epoch; the header once.

    A key missing from an epoch's logs (validation skipped by ``validation_freq``) is written as
    ``NA``; a key that first appears in a later epoch adds a column, and the rows already in the
    file are rewritten with ``NA`` in it. With ``append=True`` an existing file is continued
    under its own header.

    Args:
      filename: the CSV file to write.
      separator: the field separator.
      append: continue an existing file instead of overwriting it.
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False):
        super().__init__()
        if len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = append
        self._file: IO[str] | None = None
        self._columns: list[str] = []

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._columns = []
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                header = next(csv.reader(f, delimiter=self.separator), [])
            self._columns = header
            self._file = open(self.filename, "a", newline="")  # closed at train end
        else:
            self._file = open(self.filename, "w", newline="")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self._file is None:
            raise RuntimeError("CSVLogger: on_epoch_end was called before on_train_begin")
        new_keys = sorted(set(logs) - set(self._columns[1:]))
        if not self._columns:
            self._columns = ["epoch", *new_keys]
            self._writer().writerow(self._columns)
        elif new_keys:
            self._add_columns(new_keys)
        row = [epoch, *(logs.get(key, "NA") for key in self._columns[1:])]
        self._writer().writerow(row)
        self._file.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _writer(self) -> Any:
        return csv.writer(self._file, delimiter=self.separator, lineterminator="\n")

    def _add_columns(self, keys: list[str]) -> None:
        """Rewrite the file with ``keys`` added to the header (sorted) and ``NA`` in old rows."""
        self._file.close()
        with open(self.filename, newline="") as f:
            rows = list(csv.reader(f, delimiter=self.separator))
        old = self._columns
        self._columns = ["epoch", *sorted([*old[1:], *keys])]
        self._file = open(self.filename, "w", newline="")  # closed at train end
        writer = self._writer()
        writer.writerow(self._columns)
        for values in rows[1:]:
            record = dict(zip(old, values, strict=False))
            writer.writerow([record.get(column, "NA") for column in self._columns])
