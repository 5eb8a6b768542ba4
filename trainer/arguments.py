"""Checks and defaults of the Trainer's arguments (Keras's names and rules)."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer import batches as batchlib
from trainer import data as datalib
from trainer.data import ArrayData, IterData


def verbosity(verbose: Any) -> int:
    """0, 1 or 2 from ``verbose`` ("auto" is 1)."""
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2, False, True):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}.")
    return int(verbose)


def batch_size(value: int | None) -> int:
    """The batch size (32 when None)."""
    if value is None:
        return 32
    if not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {value!r}.")
    return int(value)


def steps_per_execution(value: Any) -> int | str:
    """``"auto"`` or a positive int."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise ValueError(f"steps_per_execution must be 'auto' or an int >= 1, got {value!r}.")
    return int(value)


def optional_count(name: str, value: Any) -> int | None:
    """None or a positive int (``name`` is the argument, for the message)."""
    if value is None:
        return None
    if not _is_int(value) or int(value) < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}.")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def count(name: str, value: Any, least: int = 1) -> int:
    """An int >= ``least`` (not a float, a string or a bool), or a ValueError naming ``name``."""
    if not _is_int(value) or int(value) < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}.")
    return int(value)


def fit_counts(
    epochs: Any, steps_per_epoch: Any, initial_epoch: Any, max_steps: Any, validation_steps: Any,
    validation_freq: Any,
) -> None:
    """Check fit's counting arguments (Keras's rules, with clear errors instead of surprises)."""
    count("epochs", epochs)
    count("initial_epoch", initial_epoch, least=0)
    optional_count("steps_per_epoch", steps_per_epoch)
    optional_count("max_steps", max_steps)
    optional_count("validation_steps", validation_steps)
    if isinstance(validation_freq, list | tuple):
        if not validation_freq or not all(_is_int(e) and e >= 1 for e in validation_freq):
            raise ValueError(f"validation_freq as a list holds the (1-based) epochs to validate, got {validation_freq!r}.")
    else:
        count("validation_freq", validation_freq)


def seed(value: Any) -> int:
    """The Trainer's seed: an int."""
    if not _is_int(value):
        raise ValueError(f"Trainer(seed=...) must be an int, got {value!r}.")
    return int(value)


def check_one_shot(data: ArrayData | IterData, epochs: int, initial_epoch: int, steps_per_epoch: int | None) -> None:
    """A one-shot iterator would run dry after one epoch unless ``steps_per_epoch`` is given."""
    if isinstance(data, IterData) and steps_per_epoch is None and epochs - initial_epoch > 1 and data.one_shot:
        raise ValueError(
            f"fit got a one-shot iterator ({type(data.source).__name__}) and "
            f"epochs={epochs}: it would be exhausted after the first epoch. Pass "
            "steps_per_epoch=... (epochs then continue from the same iterator), or a "
            "re-iterable dataset."
        )


def check_one_shot_validation(val: ArrayData | IterData, epochs: int, steps: int | None, freq: int | list[int]) -> None:
    """A one-shot validation iterator read more than once needs ``validation_steps``."""
    if not isinstance(val, IterData) or not val.one_shot or steps is not None:
        return
    validations = sum(validate_now(e, freq) for e in range(epochs))
    if validations > 1:
        raise ValueError(
            f"validation_data is a one-shot iterator ({type(val.source).__name__}) and fit "
            f"validates {validations} times: it would be exhausted after the first. Pass "
            "validation_steps=... (each validation then reads that many batches from the same "
            "iterator), or a re-iterable dataset."
        )


def validation_source(validation_data: Any, keys: batchlib.BatchKeys) -> ArrayData | IterData:
    """``(x, y[, w])`` arrays or a dataset, as a source."""
    if isinstance(validation_data, tuple) and datalib._all_arrays(validation_data):
        if len(validation_data) not in (2, 3):
            raise ValueError(
                f"validation_data must be (x, y) or (x, y, sample_weight), got a sequence of "
                f"{len(validation_data)} arrays."
            )
        return datalib.from_user(tuple(validation_data), keys=keys)
    return datalib.from_user(validation_data, keys=keys)


def predict_source(x: Any, keys: batchlib.BatchKeys) -> ArrayData | IterData:
    """Inputs for predict: arrays (a tuple is several inputs) or a dataset."""
    if datalib._all_arrays(x) and not (isinstance(x, list) and not batchlib.is_array(x[0])):
        return datalib.from_user(x, keys=keys, need_targets=False, inputs_only=True)
    return datalib.from_user(x, keys=keys, need_targets=False)


def single_batch(x: Any, y: Any, sample_weight: Any, keys: batchlib.BatchKeys, need_targets: bool) -> Any:
    """The one batch of ``train_on_batch`` / ``test_on_batch``."""
    data = datalib.from_user(x, y, sample_weight, keys=keys, need_targets=need_targets)
    if not isinstance(data, ArrayData):
        raise TypeError("train_on_batch / test_on_batch take arrays, not a dataset.")
    return data.real()


def check_labels(data: ArrayData | IterData, classes: int | None, keys: batchlib.BatchKeys) -> None:
    """For array data and an integer-label loss over ``classes`` classes: every target must be
    ``0 .. classes - 1`` (checked once, on the host, before any step)."""
    if classes is None or not isinstance(data, ArrayData):
        return
    targets = batchlib.batch_parts(data.real(), keys)[1]
    if targets is None:
        return
    values = np.asarray(targets)
    bad = values[(values < 0) | (values >= classes)]
    if bad.size:
        raise ValueError(
            f"y holds the label {int(bad.flat[0])} ({bad.size} targets outside the classes), but "
            f"the model has {classes} outputs, so the labels must be 0 .. {classes - 1}."
        )


def validate_now(epoch: int, freq: int | list[int]) -> bool:
    """Keras's ``validation_freq``: every ``freq`` epochs, or the listed (1-based) epochs."""
    if not isinstance(freq, list | tuple):
        return (epoch + 1) % freq == 0
    return (epoch + 1) in freq
