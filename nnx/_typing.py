"""Types shared across nnx: what counts as an array leaf, and the shape of a path."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

# Values that are leaves of the graph (state) wherever they appear, without a Variable.
ARRAY_TYPES = (jax.Array, np.ndarray, jax.ShapeDtypeStruct)

Key = Any  # one step of a path: an attribute name, a list index or a dict key
Path = tuple[Key, ...]  # from a graph's root to a node, Variable or leaf


def path_str(path: Path) -> str:
    """``'a/0/kernel'`` for a path; ``'<root>'`` for the empty one."""
    return "/".join(map(str, path)) or "<root>"


def key_order(key: Key) -> tuple:
    """A sort key for mixed keys: integers first, in numeric order, then the rest by ``str``."""
    return (0, key, "") if isinstance(key, int) else (1, 0, str(key))


def path_order(path: Path) -> tuple:
    """A sort key for paths, comparing them key by key with ``key_order``."""
    return tuple(map(key_order, path))


def key_from_path_entry(entry: Any) -> Key:
    """The key of a JAX key-path entry (``DictKey``, ``SequenceKey``, ``GetAttrKey``...)."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)
