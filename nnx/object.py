"""Graph nodes: ``Object`` (base of Module and Rngs) and the tracked containers ``List``/``Dict``.

A graph node is a mutable Python object with reference identity. Every structural change
(attribute set or delete, container mutation) to a node that a flatten has already seen bumps
the global structure version, so cached flattenings know when to look again. Each node also
remembers the JAX trace it was created under and refuses mutation from another trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from nnx import _structure as structure
from nnx._display import ReprParts, object_repr, treescope_repr
from nnx._statics import Static
from nnx._tracing import check_same_trace, current_trace
from nnx._typing import ARRAY_TYPES, key_order
from nnx.variablelib import Variable

_MISSING = object()
_STATIC_TYPES = (int, float, complex, str, bool, bytes, type(None), type, np.dtype)


class _Marker:
    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class _DataMarker(_Marker):
    pass


class _StaticMarker(_Marker):
    pass


def data(value: Any) -> Any:
    """Mark a value assigned to a graph-node attribute as state (its leaves become State)."""
    return _DataMarker(value)


def static(value: Any) -> Any:
    """Mark a value assigned to a graph-node attribute as static (kept in the GraphDef)."""
    return _StaticMarker(value)


class GraphNode:
    """Mixin for mutable objects that the graph functions traverse by reference.

    Subclasses implement ``_graph_items`` (sorted ``(key, value)`` children),
    ``_graph_set``/``_graph_del`` (mutation without version bumps, for write-back), and
    ``_graph_create``/``_graph_fill`` (build an instance from children, for merge).
    """

    __slots__ = ()

    def _graph_items(self) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def _graph_forced(self, key: Any) -> str | None:
        return None

    def _graph_get(self, key: Any) -> Any:
        raise NotImplementedError

    def _graph_set(self, key: Any, value: Any) -> None:
        raise NotImplementedError

    def _graph_del(self, key: Any) -> None:
        raise NotImplementedError

    @classmethod
    def _graph_create(cls) -> GraphNode:
        raise NotImplementedError

    def _graph_fill(self, items: list[tuple[Any, Any]]) -> None:
        raise NotImplementedError

    def _graph_mark_seen(self) -> None:
        raise NotImplementedError

    def _graph_trace(self) -> Any:
        raise NotImplementedError


def track(value: Any) -> Any:
    """Replace a plain list or dict by a tracked ``List``/``Dict`` (recursively); else as is."""
    t = type(value)
    if t is list:
        return List(value)
    if t is dict:
        return Dict(value)
    return value


def is_data(value: Any) -> bool:
    """Whether a value holds state: a Variable, graph node, array, or a container of them."""
    if isinstance(value, (Variable, GraphNode, *ARRAY_TYPES)):
        return True
    if isinstance(value, _STATIC_TYPES):
        return False
    if isinstance(value, list | tuple):
        return any(is_data(v) for v in value)
    if isinstance(value, dict):
        return any(is_data(v) for v in value.values())
    leaves = jax.tree_util.tree_leaves(value, is_leaf=lambda x: x is not value and is_data_leaf(x))
    if len(leaves) == 1 and leaves[0] is value:
        return False
    return any(is_data(leaf) for leaf in leaves)


def is_data_leaf(x: Any) -> bool:
    return isinstance(x, (Variable, GraphNode, *ARRAY_TYPES))


class _TrackedMapping(dict):
    """The dict methods that change a mapping, each calling ``_before_change`` first (the
    trace check and the version bump) and tracking the values it stores. Shared by ``nnx.Dict``
    and the ``__dict__`` of every Object."""

    __slots__ = ()

    def _before_change(self) -> None:
        raise NotImplementedError

    def __setitem__(self, key: Any, value: Any) -> None:
        self._before_change()
        dict.__setitem__(self, key, track(value))

    def __delitem__(self, key: Any) -> None:
        self._before_change()
        dict.__delitem__(self, key)

    def pop(self, *args: Any) -> Any:
        self._before_change()
        return dict.pop(self, *args)

    def popitem(self) -> tuple[Any, Any]:
        self._before_change()
        return dict.popitem(self)

    def clear(self) -> None:
        self._before_change()
        dict.clear(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._before_change()
        for k, v in dict(*args, **kwargs).items():
            dict.__setitem__(self, k, track(v))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self._before_change()
            dict.__setitem__(self, key, track(default))
        return dict.__getitem__(self, key)

    def __ior__(self, other: Any) -> _TrackedMapping:
        self.update(other)
        return self


class _NodeDict(_TrackedMapping):
    """The ``__dict__`` of an Object: edits through ``vars(obj)`` count as structural changes."""

    __slots__ = ("seen", "trace", "forced")

    def _before_change(self) -> None:
        check_same_trace(self, self.trace)
        if self.seen:
            structure.bump()


def _new_node_dict() -> _NodeDict:
    d = _NodeDict()
    d.seen = False
    d.trace = current_trace()
    d.forced = None
    return d


class Object(GraphNode):
    """Base class of graph nodes with attributes: Modules, Rngs, Optimizer, metrics.

    Attributes may hold Variables, arrays, other Objects, and lists / dicts / tuples of them
    (state); anything else is static and belongs to the GraphDef. Plain lists and dicts are
    stored as tracked ``nnx.List`` / ``nnx.Dict`` so their mutations are seen.

    Subclasses are registered as JAX pytrees (pass ``pytree=False`` in the class statement to
    opt out): plain JAX functions accept them, but across such a boundary sharing is not kept
    and mutations are not written back; the nnx transforms keep both.
    """

    __slots__ = ("__dict__", "__weakref__")

    def __init_subclass__(cls, pytree: bool = True, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if pytree:
            register_pytree_node(cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Object:
        obj = object.__new__(cls)
        object.__setattr__(obj, "__dict__", _new_node_dict())
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        check_same_trace(self, d.trace)
        if isinstance(value, _Marker):
            if d.forced is None:
                d.forced = {}
            d.forced[name] = "data" if isinstance(value, _DataMarker) else "static"
            value = value.value
        value = track(value)
        if dict.get(d, name, _MISSING) is value:
            return  # `self.count += 1` re-assigns the same Variable: nothing changed
        if d.seen:
            structure.bump()
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        check_same_trace(self, d.trace)
        if d.seen:
            structure.bump()
        object.__delattr__(self, name)
        if d.forced is not None:
            d.forced.pop(name, None)

    # -- graph protocol ---------------------------------------------------------------
    def _graph_items(self) -> list[tuple[Any, Any]]:
        return sorted(dict.items(self.__dict__))

    def _graph_forced(self, key: Any) -> str | None:
        forced = self.__dict__.forced
        return None if forced is None else forced.get(key)

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
        return ReprParts(type(self).__name__, list(dict.items(self.__dict__)))

    __repr__ = object_repr
    __treescope_repr__ = treescope_repr


Pytree = Object


class List(GraphNode, list):
    """A list whose mutations are tracked; plain lists assigned to Objects become one.

    Items are graph children with integer keys (state paths like ``layers/0/kernel``).
    """

    __slots__ = ("_seen", "_trace", "__weakref__")

    def __init__(self, items: Iterable[Any] = ()):
        self._seen = False
        self._trace = current_trace()
        list.__init__(self, (track(v) for v in items))

    def __new__(cls, *args: Any, **kwargs: Any) -> List:
        obj = list.__new__(cls)
        obj._seen = False
        obj._trace = current_trace()
        return obj

    def _before_change(self) -> None:
        check_same_trace(self, self._trace)
        if self._seen:
            structure.bump()

    def __setitem__(self, index: Any, value: Any) -> None:
        self._before_change()
        if isinstance(index, slice):
            value = [track(v) for v in value]
        else:
            value = track(value)
        list.__setitem__(self, index, value)

    def __delitem__(self, index: Any) -> None:
        self._before_change()
        list.__delitem__(self, index)

    def append(self, value: Any) -> None:
        self._before_change()
        list.append(self, track(value))

    def extend(self, values: Iterable[Any]) -> None:
        self._before_change()
        list.extend(self, (track(v) for v in values))

    def insert(self, index: int, value: Any) -> None:
        self._before_change()
        list.insert(self, index, track(value))

    def pop(self, index: int = -1) -> Any:
        self._before_change()
        return list.pop(self, index)

    def remove(self, value: Any) -> None:
        self._before_change()
        list.remove(self, value)

    def clear(self) -> None:
        self._before_change()
        list.clear(self)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        self._before_change()
        list.sort(self, *args, **kwargs)

    def reverse(self) -> None:
        self._before_change()
        list.reverse(self)

    def __iadd__(self, values: Iterable[Any]) -> List:
        self.extend(values)
        return self

    def __imul__(self, n: int) -> List:
        self._before_change()
        return list.__imul__(self, n)

    def _graph_items(self) -> list[tuple[Any, Any]]:
        return list(enumerate(self))

    def _graph_get(self, key: Any) -> Any:
        return list.__getitem__(self, key)

    def _graph_set(self, key: Any, value: Any) -> None:
        list.__setitem__(self, key, value)

    def _graph_del(self, key: Any) -> None:
        list.__delitem__(self, key)

    @classmethod
    def _graph_create(cls) -> List:
        return cls.__new__(cls)

    def _graph_fill(self, items: Iterable[tuple[Any, Any]]) -> None:
        list.clear(self)
        list.extend(self, (v for _, v in items))

    def _graph_mark_seen(self) -> None:
        self._seen = True

    def _graph_trace(self) -> Any:
        return self._trace

    def __reduce__(self) -> Any:
        return (type(self), (list(self),))

    def __repr__(self) -> str:
        return f"List({list.__repr__(self)})"


class Dict(GraphNode, _TrackedMapping):
    """A dict whose mutations are tracked; plain dicts assigned to Objects become one."""

    __slots__ = ("_seen", "_trace", "__weakref__")

    def __new__(cls, *args: Any, **kwargs: Any) -> Dict:
        obj = dict.__new__(cls)
        obj._seen = False
        obj._trace = current_trace()
        return obj

    def __init__(self, *args: Any, **kwargs: Any):
        dict.__init__(self)
        for k, v in dict(*args, **kwargs).items():
            dict.__setitem__(self, k, track(v))

    def _before_change(self) -> None:
        check_same_trace(self, self._trace)
        if self._seen:
            structure.bump()

    def __getattr__(self, name: str) -> Any:
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            raise AttributeError(f"Dict has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in Dict.__slots__:
            object.__setattr__(self, name, value)
        else:
            self[name] = value  # d.key = value is d["key"] = value

    def __delattr__(self, name: str) -> None:
        if name in Dict.__slots__:
            object.__delattr__(self, name)
        else:
            try:
                del self[name]
            except KeyError:
                raise AttributeError(f"Dict has no key {name!r}") from None

    def _graph_items(self) -> list[tuple[Any, Any]]:
        return sorted(dict.items(self), key=lambda kv: key_order(kv[0]))

    def _graph_get(self, key: Any) -> Any:
        return dict.__getitem__(self, key)

    def _graph_set(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)

    def _graph_del(self, key: Any) -> None:
        dict.__delitem__(self, key)

    @classmethod
    def _graph_create(cls) -> Dict:
        return cls.__new__(cls)

    def _graph_fill(self, items: Iterable[tuple[Any, Any]]) -> None:
        dict.clear(self)
        for k, v in items:
            dict.__setitem__(self, k, v)

    def _graph_mark_seen(self) -> None:
        self._seen = True

    def _graph_trace(self) -> Any:
        return self._trace

    def __reduce__(self) -> Any:
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return f"Dict({dict.__repr__(self)})"


# -- pytree registration (Flax >= 0.11 behaviour) ----------------------------------------


def _pytree_key(key: Any) -> Any:
    if isinstance(key, str):
        return jax.tree_util.GetAttrKey(key)
    if isinstance(key, int):
        return jax.tree_util.SequenceKey(key)
    return jax.tree_util.DictKey(key)


def _pytree_partition(node: GraphNode) -> tuple[list[Any], list[Any], tuple]:
    data_keys, children, statics = [], [], []
    for key, value in node._graph_items():
        forced = node._graph_forced(key)
        if forced == "data" or (forced is None and is_data(value)):
            data_keys.append(key)
            children.append(value)
        else:
            statics.append((key, Static(value)))
    return data_keys, children, (tuple(data_keys), tuple(statics))


def _pytree_flatten_with_keys(node: GraphNode):
    data_keys, children, aux = _pytree_partition(node)
    return [(_pytree_key(k), c) for k, c in zip(data_keys, children, strict=True)], aux


def _pytree_flatten(node: GraphNode):
    _, children, aux = _pytree_partition(node)
    return children, aux


def _make_pytree_unflatten(cls: type[GraphNode]):
    def unflatten(aux: tuple, children: Iterable[Any]) -> GraphNode:
        data_keys, statics = aux
        items = list(zip(data_keys, children, strict=True)) + [(k, s.value) for k, s in statics]
        items.sort(key=lambda kv: key_order(kv[0]))
        node = cls._graph_create()
        node._graph_fill(items)
        return node

    return unflatten


def register_pytree_node(cls: type[GraphNode]) -> None:
    """Register a graph-node class as a JAX pytree (data attributes are its children)."""
    jax.tree_util.register_pytree_with_keys(
        cls, _pytree_flatten_with_keys, _make_pytree_unflatten(cls), flatten_func=_pytree_flatten
    )


register_pytree_node(Object)
register_pytree_node(List)
register_pytree_node(Dict)
