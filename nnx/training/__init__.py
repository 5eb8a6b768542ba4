"""Training pieces: Optimizer and metrics; ``__all__`` is re-exported at the top of ``nnx``."""

__all__: list[str] = []
