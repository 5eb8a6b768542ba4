"""``Trainer.summary``: ``nnx.tabulate``'s table for example inputs, or without any the model's
Variables and the parameter count."""

from __future__ import annotations

from typing import Any

import numpy as np

import nnx
from trainer.batches import batch_parts


def parameter_table(model: Any) -> str:
    """One line per Variable (path, type, shape) and the total number of ``nnx.Param`` values."""
    total = 0
    lines = [f"{type(model).__name__}"]
    for path, var in nnx.state(model).flat_state():
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if isinstance(var, nnx.Param):
            total += int(np.prod(np.shape(value)))
        lines.append(f"  {'/'.join(map(str, path)):<40} {type(var).__name__:<12} {tuple(np.shape(value))}")
    lines.append(f"Total parameters: {total:,}")
    return "\n".join(lines)


def summary_text(model: Any, example_inputs: tuple, last_batch: Any, keys: Any) -> str:
    """The table for ``example_inputs``, by default the inputs of ``last_batch`` (the first
    batch the Trainer saw); the Variables alone before any batch."""
    inputs = example_inputs
    if not inputs and last_batch is not None:
        first = batch_parts(last_batch, keys)[0]
        inputs = first if isinstance(first, tuple) else (first,)
    return nnx.tabulate(model, *inputs) if inputs else parameter_table(model)
