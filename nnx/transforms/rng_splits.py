"""``nnx.split_rngs`` and ``nnx.restore_rngs``: per-layer or per-example RNG keys for
``vmap`` / ``scan``.

Splitting a stream replaces its key by ``splits`` keys (a leading axis, or axes for a tuple) and
its count by zeros of that shape, so a transform mapping over that axis hands each layer or
example its own key. With graph updates the streams are split in place and restored after (the
original streams keep the one key they consumed); without (``graph_updates=False`` or tree mode)
the function gets copies whose streams are split, sharing every other Variable with the
originals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from nnx import filterlib
from nnx._graphdef import Unflattener
from nnx._modes import resolve as resolve_mode
from nnx.graph import iter_graph
from nnx.rnglib import RngStream
from nnx.transforms.lift import Extraction, is_node
from nnx.variablelib import RngCount, RngKey

Backup = tuple[RngStream, Any, Any]
_MISSING = object()


class SplitBackups(Iterable[Backup]):
    """The streams ``split_rngs`` split in place, with their previous key and count; leaving it
    as a context manager (or ``nnx.restore_rngs``) puts them back."""

    def __init__(self, backups: list[Backup]):
        self.backups = backups

    def __iter__(self) -> Iterator[Backup]:
        return iter(self.backups)

    def __enter__(self) -> SplitBackups:
        return self

    def __exit__(self, *exc: Any) -> None:
        restore_rngs(self)


def restore_rngs(backups: Iterable[Backup], /) -> None:
    """Give split streams back their key and count from before ``split_rngs``."""
    for stream, key, count in backups:
        stream.key.set_value(key)
        stream.count.set_value(count)


def _split_keys(stream: RngStream, splits: int | tuple[int, ...], squeeze: bool) -> tuple:
    keys = jax.random.split(stream(), splits)
    if squeeze:
        keys = keys[0]
    return keys, jnp.zeros(keys.shape, dtype=jnp.uint32)


def split_rngs(
    node: Any = _MISSING,
    /,
    *,
    splits: int | tuple[int, ...],
    only: Any = ...,
    squeeze: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Split the RNG streams (those matching ``only``) of ``node``, or, as a decorator, of a
    function's arguments for the duration of each call.

    With graph updates (the default) ``split_rngs(node, ...)`` splits in place and returns a
    ``SplitBackups`` (a context manager that restores them); otherwise it returns a copy of
    ``node`` with split streams (other Variables shared).

    Args:
      node: the graph node or pytree holding Rngs; omitted for the decorator form.
      splits: the number of keys (or a shape of keys) each stream gets.
      only: a filter on the streams to split (e.g. ``'dropout'``).
      squeeze: keep one key of the split (``splits`` must be 1).
    """
    mode = resolve_mode(graph, graph_updates)
    if squeeze and splits != 1:
        raise ValueError(f"split_rngs: squeeze=True needs splits=1, got splits={splits!r}")
    predicate = filterlib.to_predicate(only)

    def chosen(path: tuple, stream: Any) -> bool:
        return isinstance(stream, RngStream) and predicate((*path, "key"), stream.key) and (
            predicate((*path, "count"), stream.count)
        )

    def in_place(tree: Any) -> SplitBackups:
        backups = []
        for root in jax.tree_util.tree_leaves(tree, is_leaf=is_node):
            if not is_node(root):
                continue
            for path, stream in iter_graph(root):
                if chosen(path, stream):
                    keys, counts = _split_keys(stream, splits, squeeze)
                    backups.append((stream, stream.key.get_value(), stream.count.get_value()))
                    stream.key.set_value(keys)
                    stream.count.set_value(counts)
        return SplitBackups(backups)

    def copied(tree: Any) -> Any:
        # New graph nodes over the same Variables; each split stream gets new key and count.
        extraction = Extraction([tree], mode)
        (treedef, defs), = extraction.static.args
        u = Unflattener(list(extraction.leaves))
        if treedef is None:
            copy = u.unflatten(defs[0])
        else:
            it = iter(extraction.ordinary)
            copy = treedef.unflatten([next(it) if d is None else u.unflatten(d) for d in defs])
        for root in jax.tree_util.tree_leaves(copy, is_leaf=is_node):
            if not is_node(root):
                continue
            for path, stream in iter_graph(root):
                if chosen(path, stream):
                    keys, counts = _split_keys(stream, splits, squeeze)
                    stream._graph_set("key", RngKey(keys, tag=stream.tag))
                    stream._graph_set("count", RngCount(counts, tag=stream.tag))
        return copy

    if node is not _MISSING:
        return in_place(node) if mode.full else copied(node)

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not mode.full:
                args, kwargs = copied((args, kwargs))
                return f(*args, **kwargs)
            with in_place((args, kwargs)):
                return f(*args, **kwargs)

        return wrapper

    return decorator


__all__ = ["SplitBackups", "restore_rngs", "split_rngs"]
