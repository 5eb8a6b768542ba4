"""Activation functions (re-exported from ``jax.nn`` and ``jax.numpy``) and the ``PReLU`` module."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import (
    celu,
    elu,
    gelu,
    glu,
    hard_sigmoid,
    hard_silu,
    hard_swish,
    hard_tanh,
    identity,
    leaky_relu,
    log_sigmoid,
    log_softmax,
    logsumexp,
    mish,
    one_hot,
    relu,
    relu6,
    selu,
    sigmoid,
    silu,
    soft_sign,
    softmax,
    softplus,
    sparse_plus,
    sparse_sigmoid,
    squareplus,
    standardize,
    swish,
)
from jax.numpy import tanh

from nnx.module import Module
from nnx.variablelib import Param

normalize = standardize  # the older jax.nn name for standardize


class PReLU(Module):
    """Leaky ReLU with a learned slope: ``x if x >= 0 else negative_slope * x``.

    Args:
      negative_slope_init: the initial slope for negative inputs.
      param_dtype: dtype of the ``negative_slope`` parameter (a scalar).
    """

    def __init__(self, negative_slope_init: float = 0.01, param_dtype: Any = jnp.float32):
        self.negative_slope = Param(jnp.asarray(negative_slope_init, dtype=param_dtype))
        self.param_dtype = param_dtype

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Apply the activation elementwise (the slope is cast to the inputs' dtype)."""
        slope = jnp.asarray(self.negative_slope.value, jnp.result_type(inputs))
        return jnp.where(inputs >= 0, inputs, slope * inputs)


__all__ = [
    "PReLU", "celu", "elu", "gelu", "glu", "hard_sigmoid", "hard_silu", "hard_swish",
    "hard_tanh", "identity", "leaky_relu", "log_sigmoid", "log_softmax", "logsumexp", "mish", "normalize", "one_hot",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_sign", "softmax", "softplus", "sparse_plus",
    "sparse_sigmoid", "squareplus", "standardize", "swish", "tanh",
]
