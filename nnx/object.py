"""Graph nodes: ``Object`` (base of Module and Rngs); the tracked containers ``List`` / ``Dict``
are in ``nnx._containers`` and re-exported here.

A graph node is a mutable Python object with reference identity. Every structural change
(attribute set or delete, container mutation) to a node that a flatten has already seen bumps
the global structure version, so cached flattenings know when to look again. Each node also
remembers the JAX trace it was created under and refuses mutation from another trace.

Which attributes (and List / Dict items) are data and which are static follows ``nnx._data``:
``nnx.data`` / ``nnx.static`` marks and class declarations first, then the value's kind; values
that would hide data in the GraphDef raise when assigned and when construction ends.
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Iterable
from typing import Any

from nnx import _data
from nnx import _structure as structure
from nnx._containers import (
    MISSING,
    Dict,
    List,
    TrackedMapping,
    check_trace,
    classify,
    previous_mark,
    register_pytree_node,
    track,
)
from nnx._data import (
    DATA,
    INFERRED,
    STATIC,
    Data,
    Static,
    data,
    dataclass,
    has_data,
    is_data,
    register_data_type,
    static,
    unmark,
)
from nnx._display import ReprParts, format_bytes, object_repr, treescope_repr
from nnx._node import GraphNode
from nnx._tracing import current_trace
from nnx._typing import ARRAY_TYPES
from nnx.variablelib import Variable


class _NodeDict(TrackedMapping):
    """The ``__dict__`` of an Object: edits through ``vars(obj)`` count as structural changes
    (and are not checked for data, as in Flax). ``forced`` maps keys to their marks."""

    __slots__ = ("seen", "trace", "forced")

    def _before_change(self) -> None:
        check_trace(self, self.trace)
        if self.seen:
            structure.bump()

    def _forget(self, key: Any) -> None:
        if self.forced is not None:
            self.forced.pop(key, None)


def _new_node_dict() -> _NodeDict:
    d = _NodeDict()
    d.seen = False
    d.trace = current_trace()
    d.forced = None
    return d


class ObjectMeta(ABCMeta):
    """Checks, when construction ends, that no static attribute holds data (e.g. an array
    appended to a plain list after it was assigned)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        if cls._nnx_pytree:
            obj._check_static_attributes()
        return obj


class Object(GraphNode, metaclass=ObjectMeta):
    """Base class of graph nodes with attributes: Modules, Rngs, Optimizer, metrics.

    Attributes may hold Variables, arrays, other Objects, and lists / dicts / tuples of them
    (state); anything else is static and belongs to the GraphDef (see ``nnx.data`` and
    ``nnx.static`` to choose explicitly). Plain lists and dicts are stored as tracked
    ``nnx.List`` / ``nnx.Dict`` so their mutations are seen.

    Subclasses are registered as JAX pytrees (pass ``pytree=False`` in the class statement to
    opt out; the data/static checks are then skipped): plain JAX functions accept them, but
    across such a boundary sharing is not kept and mutations are not written back; the nnx
    transforms keep both.
    """

    __slots__ = ("__dict__", "__weakref__")
    _nnx_pytree = True
    _nnx_declared: dict[str, str] = {}

    def __init_subclass__(cls, pytree: bool = True, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls._nnx_pytree = pytree
        cls._nnx_declared = _data.declared_kinds(cls, cls._nnx_declared)
        if pytree:
            register_pytree_node(cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Object:
        obj = object.__new__(cls)
        object.__setattr__(obj, "__dict__", _new_node_dict())
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        check_trace(self, d.trace)
        value, mark = unmark(value)
        forced = d.forced
        if type(self)._nnx_pytree:
            marked = previous_mark(forced.get(name) if forced else None, dict.get(d, name, MISSING))
            value, mark = classify(self, name, value, mark, marked, self._nnx_declared.get(name))
        else:
            value = track(value)
        if mark is not None and (forced is None or forced.get(name) != mark):
            if forced is None:
                d.forced = forced = {}
            forced[name] = mark
            if d.seen and mark != INFERRED:  # INFERRED: still data, as before
                structure.bump()
        if dict.get(d, name, MISSING) is value:
            return  # `self.count += 1` re-assigns the same Variable: nothing changed
        if d.seen:
            structure.bump()
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        check_trace(self, d.trace)
        if d.seen:
            structure.bump()
        object.__delattr__(self, name)
        if d.forced is not None:
            d.forced.pop(name, None)

    def _check_static_attributes(self) -> None:
        """Raise if a static attribute holds data (see ``ObjectMeta``)."""
        for name, value in dict.items(self.__dict__):
            kind = self._graph_forced(name)
            if kind in (DATA, INFERRED) or kind is None and not (
                isinstance(value, GraphNode) and value._plain == STATIC
            ):
                continue
            found = has_data(value)
            if found and (
                kind == STATIC
                or _data.is_dataclass_field(self, name)
                or not _data.only_nodes(found)
            ):
                raise _data.unexpected_data_error(self, name, value, found)

    # -- graph protocol ---------------------------------------------------------------
    def _graph_items(self) -> list[tuple[Any, Any]]:
        return sorted(dict.items(self.__dict__))

    def _graph_forced(self, key: Any) -> str | None:
        forced = self.__dict__.forced
        if forced is not None and key in forced:
            return forced[key]
        return self._nnx_declared.get(key)

    def _graph_get(self, key: Any) -> Any:
        return dict.__getitem__(self.__dict__, key)

    def _graph_set(self, key: Any, value: Any) -> None:
        dict.__setitem__(self.__dict__, key, value)

    def _graph_del(self, key: Any) -> None:
        dict.__delitem__(self.__dict__, key)

    @classmethod
    def _graph_create(cls) -> Object:
        obj = object.__new__(cls)
        object.__setattr__(obj, "__dict__", _new_node_dict())
        return obj

    def _graph_fill(self, items: Iterable[tuple[Any, Any]]) -> None:
        d = self.__dict__
        dict.clear(d)
        for k, v in items:
            dict.__setitem__(d, k, v)

    def _graph_mark_seen(self) -> None:
        self.__dict__.seen = True

    def _restore_marks(self, marks: tuple) -> None:
        self.__dict__.forced = dict(marks)

    def _graph_trace(self) -> Any:
        return self.__dict__.trace

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__
        return {"attributes": dict(d), "forced": d.forced}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(self.__dict__, _NodeDict):
            object.__setattr__(self, "__dict__", _new_node_dict())
        dict.update(self.__dict__, state["attributes"])
        self.__dict__.forced = state["forced"]

    def _repr_parts(self) -> ReprParts:
        return ReprParts(type(self).__name__, list(dict.items(self.__dict__)), comment=_stats(self))

    __repr__ = object_repr
    __treescope_repr__ = treescope_repr


def _stats(node: Object) -> str:
    """``'Param: 6 (24 B), BatchStat: 2 (8 B), Total: 8 (32 B)'``: the sizes of the Variables
    under ``node``, per type (RNG state as one), each Variable counted once."""
    from nnx._walks import iter_graph  # the walks build on this module
    from nnx.variablelib import RngState

    sizes: dict[type, list[int]] = {}
    for _, x in iter_graph(node, graph=True):
        if isinstance(x, Variable):
            value = x.get_raw_value()
            size, nbytes = getattr(value, "size", None), getattr(value, "nbytes", None)
            if size is None or nbytes is None:
                continue
            kind = RngState if isinstance(x, RngState) else type(x)
            total = sizes.setdefault(kind, [0, 0])
            total[0] += int(size)
            total[1] += int(nbytes)
    parts = [f"{t.__name__}: {n:,} ({format_bytes(b)})" for t, (n, b) in sizes.items()]
    if len(sizes) > 1:
        n, b = (sum(v[i] for v in sizes.values()) for i in (0, 1))
        parts.append(f"Total: {n:,} ({format_bytes(b)})")
    return ", ".join(parts)


Pytree = Object


def check_pytree(node: Object) -> None:
    """Raise if a static attribute of ``node`` holds data (as when its construction ends)."""
    if not isinstance(node, Object):
        raise TypeError(f"check_pytree expects an nnx.Object / Pytree, got {type(node).__name__}")
    node._check_static_attributes()


register_pytree_node(Object)


__all__ = [
    "ARRAY_TYPES", "Data", "Dict", "GraphNode", "List", "Object", "Pytree", "Static",
    "check_pytree", "data", "dataclass", "has_data", "is_data", "register_data_type",
    "register_pytree_node", "static", "track", "Variable",
]
