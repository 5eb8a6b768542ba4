"""Initializers: the ``jax.nn.initializers`` set plus ``zeros_init`` / ``ones_init``."""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.nn.initializers import (  # noqa: F401 - re-exported
    constant,
    delta_orthogonal,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    kaiming_normal,
    kaiming_uniform,
    lecun_normal,
    lecun_uniform,
    normal,
    ones,
    orthogonal,
    truncated_normal,
    uniform,
    variance_scaling,
    xavier_normal,
    xavier_uniform,
    zeros,
)

Initializer = Callable[..., jax.Array]


def zeros_init() -> Initializer:
    """An initializer that returns zeros (``zeros_init()(key, shape, dtype)``)."""
    return zeros


def ones_init() -> Initializer:
    """An initializer that returns ones (``ones_init()(key, shape, dtype)``)."""
    return ones



__all__ = [
    "Initializer", "constant", "delta_orthogonal", "glorot_normal", "glorot_uniform", "he_normal",
    "he_uniform", "kaiming_normal", "kaiming_uniform", "lecun_normal", "lecun_uniform", "normal",
    "ones", "ones_init", "orthogonal", "truncated_normal", "uniform", "variance_scaling",
    "xavier_normal", "xavier_uniform", "zeros", "zeros_init",
]
