"""Flat views of nested mappings: ``{'a': {'b': 1}}`` <-> ``{('a', 'b'): 1}`` (or ``{'a/b': 1}``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any


class _EmptyNode:
    """Stands for an empty sub-mapping in a flat mapping (``keep_empty_nodes=True``)."""

    def __repr__(self) -> str:
        return "empty_node"


empty_node = _EmptyNode()


def flatten_mapping(
    xs: Mapping[Any, Any],
    /,
    *,
    keep_empty_nodes: bool = False,
    is_leaf: Callable[[tuple[Any, ...], Any], bool] | None = None,
    sep: str | None = None,
) -> dict[Any, Any]:
    """A flat dict from key paths to the leaves of the nested mapping ``xs``.

    Args:
      xs: a nested mapping (dict, State, FrozenDict...).
      keep_empty_nodes: keep empty sub-mappings, as ``empty_node`` values (else dropped).
      is_leaf: ``(path, value) -> bool``; True keeps a sub-mapping whole, as a leaf.
      sep: join each path into one string with ``sep`` instead of a tuple.

    Example::

      >>> flatten_mapping({'foo': 1, 'bar': {'a': 2}})
      {('foo',): 1, ('bar', 'a'): 2}
    """
    if not isinstance(xs, Mapping):
        raise TypeError(f"flatten_mapping expects a mapping, got {type(xs).__name__}.")
    flat: dict[Any, Any] = {}

    def walk(node: Mapping, prefix: tuple[Any, ...]) -> None:
        for key, value in node.items():
            path = (*prefix, key)
            if isinstance(value, Mapping) and not (is_leaf is not None and is_leaf(path, value)):
                if value:
                    walk(value, path)
                elif keep_empty_nodes:
                    flat[path] = empty_node
            else:
                flat[path] = value

    walk(xs, ())
    if sep is None:
        return flat
    return {sep.join(map(str, path)): value for path, value in flat.items()}


def flatten_to_sequence(
    xs: Mapping[Any, Any],
    /,
    *,
    is_leaf: Callable[[tuple[Any, ...], Any], bool] | None = None,
) -> list[tuple[Any, Any]]:
    """``flatten_mapping(xs)`` as a list of ``(path, leaf)`` pairs, in insertion order."""
    return list(flatten_mapping(xs, is_leaf=is_leaf).items())


def unflatten_mapping(xs: Mapping[Any, Any] | Iterable[tuple[Any, Any]], /, *, sep: str | None = None) -> dict[Any, Any]:
    """The nested dict of a flat mapping (the inverse of ``flatten_mapping``).

    ``empty_node`` values become empty dicts.

    Args:
      xs: a mapping (or pairs) from key paths (tuples, or strings with ``sep``) to leaves.
      sep: the separator of string paths.
    """
    pairs = xs.items() if isinstance(xs, Mapping) else xs
    result: dict[Any, Any] = {}
    for path, value in pairs:
        if sep is not None:
            path = tuple(path.split(sep))
        if not isinstance(path, tuple) or not path:
            raise ValueError(
                f"unflatten_mapping: keys must be non-empty tuples (or strings with sep=), got {path!r}."
            )
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = {} if value is empty_node else value
    return result


__all__ = ["empty_node", "flatten_mapping", "flatten_to_sequence", "unflatten_mapping"]
