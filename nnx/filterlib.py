"""Filters: ways to select Variables by type, path, tag or predicate.

A filter is turned into a predicate ``(path, value) -> bool``. Accepted filters: a type
(isinstance), a string (a path part equal to it, or a Variable tagged with it), ``...`` or
``True`` (everything), ``None`` or ``False`` (nothing), a list/tuple (any of), a callable, and
the combinators below.
"""

from __future__ import annotations

from collections.abc import Callable

from nnx.variablelib import Variable

Predicate = Callable[[tuple, object], bool]


class OfType:
    """Matches values that are instances of ``type``."""

    def __init__(self, type: type):
        self.type = type

    def __call__(self, path: tuple, x: object) -> bool:
        return isinstance(x, self.type)

    def __repr__(self) -> str:
        return f"OfType({self.type.__name__})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OfType) and other.type == self.type

    def __hash__(self) -> int:
        return hash((OfType, self.type))


class PathContains:
    """Matches when ``key`` is one of the path's parts (or a substring of one, ``exact=False``)."""

    def __init__(self, key: object, exact: bool = True):
        self.key = key
        self.exact = exact

    def __call__(self, path: tuple, x: object) -> bool:
        if self.exact:
            return any(p == self.key for p in path)
        return any(str(self.key) in str(p) for p in path)

    def __repr__(self) -> str:
        return f"PathContains({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathContains) and (other.key, other.exact) == (self.key, self.exact)

    def __hash__(self) -> int:
        return hash((PathContains, self.key, self.exact))


class WithTag:
    """Matches values whose ``tag`` equals ``tag``: Variables by their ``tag`` metadata (RNG
    state is tagged by stream), other objects (an ``RngStream``) by their ``tag`` attribute."""

    def __init__(self, tag: str):
        self.tag = tag

    def __call__(self, path: tuple, x: object) -> bool:
        if isinstance(x, Variable):
            return x._metadata.get("tag") == self.tag
        return getattr(x, "tag", None) == self.tag

    def __repr__(self) -> str:
        return f"WithTag({self.tag!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WithTag) and other.tag == self.tag

    def __hash__(self) -> int:
        return hash((WithTag, self.tag))


class _PathOrTag:
    """A string filter: a path part equal to the string, or a Variable tagged with it."""

    def __init__(self, name: str):
        self.path = PathContains(name)
        self.tag = WithTag(name)
        self.name = name

    def __call__(self, path: tuple, x: object) -> bool:
        return self.path(path, x) or self.tag(path, x)

    def __repr__(self) -> str:
        return repr(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PathOrTag) and other.name == self.name

    def __hash__(self) -> int:
        return hash((_PathOrTag, self.name))


class _Combinator:
    def __init__(self, *filters: object):
        self.filters = filters
        self.predicates = tuple(to_predicate(f) for f in filters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.filters))})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.predicates == self.predicates

    def __hash__(self) -> int:
        return hash((type(self), self.predicates))


class Any(_Combinator):  # noqa: A001 - the Flax name
    """Matches when any of the filters matches."""

    def __call__(self, path: tuple, x: object) -> bool:
        return any(p(path, x) for p in self.predicates)


class All(_Combinator):
    """Matches when all of the filters match."""

    def __call__(self, path: tuple, x: object) -> bool:
        return all(p(path, x) for p in self.predicates)


class Not:
    """Matches when the filter does not."""

    def __init__(self, filter: object):
        self.filter = filter
        self.predicate = to_predicate(filter)

    def __call__(self, path: tuple, x: object) -> bool:
        return not self.predicate(path, x)

    def __repr__(self) -> str:
        return f"Not({self.filter!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Not) and other.predicate == self.predicate

    def __hash__(self) -> int:
        return hash((Not, self.predicate))


class Everything:
    """Matches everything."""

    def __call__(self, path: tuple, x: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "Everything()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Everything)

    def __hash__(self) -> int:
        return hash(Everything)


class Nothing:
    """Matches nothing."""

    def __call__(self, path: tuple, x: object) -> bool:
        return False

    def __repr__(self) -> str:
        return "Nothing()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Nothing)

    def __hash__(self) -> int:
        return hash(Nothing)


def to_predicate(filter: object) -> Predicate:
    """Turn a filter into a predicate ``(path, value) -> bool``; unknown kinds raise.

    ``nnx.Everything`` / ``nnx.Nothing`` given as classes (a common slip: they are filters to
    instantiate) mean ``Everything()`` / ``Nothing()``; the other filter classes, which need
    arguments, raise a TypeError saying so.
    """
    if filter is Everything or filter is Nothing:
        return filter()
    if isinstance(filter, type) and filter in _FILTER_CLASSES:
        raise TypeError(
            f"nnx.{filter.__name__} is a filter class, not a filter: call it, e.g. "
            f"nnx.{filter.__name__}(...)."
        )
    if isinstance(filter, type):
        return OfType(filter)
    if isinstance(filter, str):
        return _PathOrTag(filter)
    if filter is Ellipsis or filter is True:
        return Everything()
    if filter is None or filter is False:
        return Nothing()
    if isinstance(filter, list | tuple):
        return Any(*filter)
    if callable(filter):
        return filter
    raise TypeError(
        f"Unknown filter {filter!r} of type {type(filter).__name__}: expected a Variable type, "
        "a string, ..., True/False/None, a list or tuple of filters, or a callable "
        "(path, value) -> bool."
    )


_FILTER_CLASSES = (OfType, PathContains, WithTag, Any, All, Not)


def filters_to_predicates(filters: tuple[object, ...]) -> tuple[Predicate, ...]:
    """Predicates for a sequence of filters; ``...``/``True`` may only come last."""
    for i, f in enumerate(filters[:-1]):
        if f is Ellipsis or f is True:
            raise ValueError(
                "`...` or `True` can only be used as the last filters: they match everything, "
                f"so the filters after them would match nothing; got it at position {i} of "
                f"{filters!r}."
            )
    return tuple(to_predicate(f) for f in filters)
