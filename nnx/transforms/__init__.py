"""JAX transforms that understand graph nodes; ``__all__`` is re-exported at the top of ``nnx``."""

__all__: list[str] = []
