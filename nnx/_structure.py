"""A global structure version: bumped by every structural change to a graph node already seen
by a flatten, so cached flattenings (``nnx.jit``'s fast path) know when to look again."""

_version = 0


def bump() -> None:
    """Record a structural change."""
    global _version
    _version += 1


def version() -> int:
    """The current structure version."""
    return _version
