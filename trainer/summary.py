"""``Trainer.summary`` without example inputs: the model's Variables and the parameter count."""

from __future__ import annotations

from typing import Any

import numpy as np

import nnx


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
