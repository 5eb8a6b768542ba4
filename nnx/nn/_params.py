"""Creating a layer's parameters: the initializer's value, reshaped when the layer initializes a
flattened shape, in a Variable carrying the metadata of the layer's ``*_metadata=`` keyword."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from nnx.nn import initializers
from nnx.nn._eager_init import init_value
from nnx.variablelib import Param, Variable

NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def create_param(
    layer: str,
    name: str,
    initializer: initializers.Initializer,
    key: Any,
    shape: tuple[int, ...],
    dtype: Any,
    metadata: Mapping[str, Any] = NO_METADATA,
    *,
    init_shape: tuple[int, ...] | None = None,
    variable_type: type[Variable] = Param,
) -> Variable:
    """``variable_type(initializer(key, init_shape, dtype) reshaped to shape, **metadata)``.

    The initializer may return a ``VariableMetadata`` (``with_partitioning``); its metadata is
    kept and ``metadata`` is added on top. jax's initializers are evaluated by
    ``nnx.nn._eager_init.init_value``: the same values with fewer XLA compilations.

    Args:
      layer: the layer's name, for error messages.
      name: the parameter's name; the keyword is ``{name}_metadata``.
      initializer: called as ``initializer(key, shape, dtype)``.
      key: the random key.
      shape: the parameter's shape.
      dtype: the parameter's dtype.
      metadata: extra Variable metadata (e.g. ``{"out_sharding": ("embed", "mlp")}``).
      init_shape: the shape the initializer sees, when it differs from ``shape`` (a flattened
        view with the right fan-in and fan-out); the value is reshaped to ``shape``.
      variable_type: the Variable subclass to create.
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"{layer}: {name}_metadata must be a mapping of metadata names to values, got "
            f"{type(metadata).__name__}"
        )
    bad = [d for d in shape if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1]
    if bad:
        raise ValueError(
            f"{layer}: its {name} would have shape {tuple(shape)}; the sizes come from the "
            f"layer's arguments (features, kernel size, ...) and must be positive integers, got "
            f"{', '.join(repr(d) for d in bad)}."
        )
    if init_shape is None:
        value = init_value(initializer, key, shape, dtype)
    else:
        value = init_value(initializer, key, init_shape, dtype, reshape_to=shape)
    return variable_type(value, **metadata)
