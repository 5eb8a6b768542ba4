"""JAX transforms that understand graph nodes; ``__all__`` is re-exported at the top of ``nnx``."""

from nnx.transforms.jit import jit

__all__ = ["jit"]
