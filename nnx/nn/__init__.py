"""Layers, activations, pooling and initializers; everything listed in ``__all__`` is also
re-exported at the top of ``nnx``."""

from nnx.nn import initializers

__all__ = ["initializers"]
