"""The tracked containers ``nnx.List`` / ``nnx.Dict`` (plain lists and dicts assigned to
graph nodes become them), the checks every stored value goes through, and the JAX pytree
registration shared by all graph nodes.

A List or Dict is a graph node: its items are children (keys ``0, 1, ...`` or the dict keys),
each data or static as an attribute would be (``nnx._data``), and every mutation of one a
flatten has seen bumps the structure version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax

from nnx import _data
from nnx import _structure as structure
from nnx._data import DATA, INFERRED, STATIC, has_data, unmark
from nnx._node import GraphNode
from nnx._statics import Static as _StaticValue
from nnx._tracing import TraceContextError, current_trace
from nnx._typing import key_order


def check_trace(node: Any, created_under: Any) -> None:
    """Raise TraceContextError if ``node`` (created under ``created_under``) is changed from
    another JAX trace."""
    if created_under is not None and created_under != current_trace():
        raise TraceContextError(
            f"Cannot mutate '{type(node).__name__}' from different trace level: it was created "
            "outside the JAX transform that is running now (captured by a closure). Pass it to "
            "the nnx transform as an argument instead, so its updates are carried back."
        )


def track(value: Any, plain: str = DATA) -> Any:
    """Replace a plain list or dict by a tracked ``List``/``Dict`` (recursively); else as is.
    ``plain`` records on the replacement whether the original was data or static."""
    t = type(value)
    if t is list:
        new = List(value)
    elif t is dict:
        new = Dict(value)
    else:
        return value
    new._plain = plain
    return new


def classify(
    owner: Any, key: Any, value: Any, mark: str | None, marked: str | None = None,
    declared: str | None = None,
) -> tuple[Any, str | None]:
    """Check ``value`` for ``owner[key]``; return it as it is stored (plain lists and dicts
    tracked, except static marked ones) and the mark to record for the key. ``mark`` is the
    mark given now, ``marked`` the one the key had (see ``previous_mark``) and ``declared``
    the class declaration; the first of them that is set rules, else the value's kind."""
    if mark is not None:
        _data.check_kind(owner, key, value, mark, explicit=True)
        return (value if mark == STATIC else track(value)), mark
    kind = marked or declared
    if kind == STATIC:
        found = has_data(value)
        if found:
            error = _data.data_in_static_error if marked else _data.unexpected_data_error
            raise error(owner, key, value, found)
        return value, marked
    if kind is None:
        kind = _data.infer_kind(owner, key, value, _data.is_dataclass_field(owner, key))
        return track(value, plain=kind), None
    if kind == INFERRED and _data.holds_data(value):
        return track(value), None  # data by value again: nothing to record
    return track(value), marked


def previous_mark(marked: str | None, previous: Any) -> str | None:
    """The mark a key keeps when it is assigned again: its recorded one, or ``INFERRED`` when
    it held data by value, so that it stays data whatever it is given now, as in Flax."""
    if marked is None and previous is not MISSING and _data.holds_data(previous):
        return INFERRED
    return marked


MISSING: Any = object()  # "no value yet" for ``previous_mark``


class TrackedMapping(dict):
    """The dict methods that change a mapping, each calling ``_before_change`` first (the
    trace check and the version bump) and storing values through ``_store``. Shared by
    ``nnx.Dict`` and the ``__dict__`` of every Object."""

    __slots__ = ()

    def _before_change(self) -> None:
        raise NotImplementedError

    def _store(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, track(value))

    def _forget(self, key: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        self._before_change()
        self._store(key, value)

    def __delitem__(self, key: Any) -> None:
        self._before_change()
        dict.__delitem__(self, key)
        self._forget(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._before_change()
        if key in self:
            self._forget(key)
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[Any, Any]:
        self._before_change()
        item = dict.popitem(self)
        self._forget(item[0])
        return item

    def clear(self) -> None:
        self._before_change()
        for key in list(self):
            self._forget(key)
        dict.clear(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._before_change()
        for k, v in dict(*args, **kwargs).items():
            self._store(k, v)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self._before_change()
            self._store(key, default)
        return dict.__getitem__(self, key)

    def __ior__(self, other: Any) -> TrackedMapping:
        self.update(other)
        return self


# -- List ------------------------------------------------------------------------------------


def _rebuild_list(cls: type, items: list, marks: list | None, plain: bool) -> List:
    new = cls._graph_create()
    list.extend(new, items)
    new._marks = marks
    new._plain = plain
    return new


class List(GraphNode, list):
    """A list whose mutations are tracked; plain lists assigned to Objects become one.

    Items are graph children with integer keys (state paths like ``layers/0/kernel``). An item
    is data or static as an attribute would be; ``nnx.List([nnx.data(1), nnx.static(f)])``
    chooses per item.
    """

    __slots__ = ("_seen", "_trace", "_marks", "_plain", "__weakref__")

    def __new__(cls, *args: Any, **kwargs: Any) -> List:
        obj = list.__new__(cls)
        obj._seen = False
        obj._trace = current_trace()
        obj._marks = None
        obj._plain = False
        return obj

    def __init__(self, items: Iterable[Any] = ()):
        list.__init__(self)
        start = 0
        for value in items:
            value, mark = self._prepare(start, value)
            list.append(self, value)
            self._set_mark(start, mark, inserted=True)
            start += 1

    def _prepare(self, index: int, value: Any) -> tuple[Any, str | None]:
        value, mark = unmark(value)
        return classify(self, index, value, mark)

    def _set_mark(self, index: Any, mark: str | None, inserted: bool = False) -> None:
        """Record the mark of the item now at ``index`` (just inserted there, or replaced)."""
        marks = self._marks
        if marks is None:
            if mark is None:
                return
            self._marks = marks = [None] * (len(self) - (1 if inserted else 0))
        if inserted:
            marks.insert(index if index >= 0 else len(marks) + index + 1, mark)
        else:
            marks[index] = mark

    def _before_change(self) -> None:
        check_trace(self, self._trace)
        if self._seen:
            structure.bump()

    def __setitem__(self, index: Any, value: Any) -> None:
        self._before_change()
        if isinstance(index, slice):
            prepared = [self._prepare(i, v) for i, v in enumerate(value)]
            kinds = [m for _, m in prepared]
            marks = self._marks
            if marks is None and any(kinds):
                marks = [None] * len(self)
            list.__setitem__(self, index, [v for v, _ in prepared])
            if marks is not None:
                marks[index] = kinds
                self._marks = marks
        else:
            value, mark = unmark(value)
            marked = None if self._marks is None else self._marks[index]
            marked = previous_mark(marked, list.__getitem__(self, index))
            value, mark = classify(self, index, value, mark, marked)
            list.__setitem__(self, index, value)
            if mark is not None or marked is not None:
                self._set_mark(index, mark)

    def __delitem__(self, index: Any) -> None:
        self._before_change()
        list.__delitem__(self, index)
        if self._marks is not None:
            del self._marks[index]

    def append(self, value: Any) -> None:
        self._before_change()
        value, mark = self._prepare(len(self), value)
        list.append(self, value)
        self._set_mark(len(self) - 1, mark, inserted=True)

    def extend(self, values: Iterable[Any]) -> None:
        self._before_change()
        for value in list(values):
            value, mark = self._prepare(len(self), value)
            list.append(self, value)
            self._set_mark(len(self) - 1, mark, inserted=True)

    def insert(self, index: int, value: Any) -> None:
        self._before_change()
        value, mark = self._prepare(index, value)
        n = len(self)
        list.insert(self, index, value)
        position = max(0, min(n, index if index >= 0 else n + index))
        self._set_mark(position, mark, inserted=True)

    def pop(self, index: int = -1) -> Any:
        self._before_change()
        value = list.pop(self, index)
        if self._marks is not None:
            self._marks.pop(index)
        return value

    def remove(self, value: Any) -> None:
        self._before_change()
        del self[list.index(self, value)]

    def clear(self) -> None:
        self._before_change()
        list.clear(self)
        self._marks = None

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._before_change()
        self._reorder(sorted(range(len(self)), key=lambda i: (key or _identity)(self[i]),
                             reverse=reverse))

    def reverse(self) -> None:
        self._before_change()
        self._reorder(range(len(self) - 1, -1, -1))

    def _reorder(self, order: Iterable[int]) -> None:
        order = list(order)
        items = [list.__getitem__(self, i) for i in order]
        list.__setitem__(self, slice(None), items)
        if self._marks is not None:
            self._marks = [self._marks[i] for i in order]

    def __iadd__(self, values: Iterable[Any]) -> List:
        self.extend(values)
        return self

    def __imul__(self, n: int) -> List:
        self._before_change()
        list.__imul__(self, n)
        if self._marks is not None:
            self._marks *= n
        return self

    def _graph_items(self) -> list[tuple[Any, Any]]:
        return list(enumerate(self))

    def _graph_forced(self, key: Any) -> str | None:
        marks = self._marks
        return None if marks is None else marks[key]

    def _graph_get(self, key: Any) -> Any:
        return list.__getitem__(self, key)

    def _graph_set(self, key: Any, value: Any) -> None:
        list.__setitem__(self, key, value)

    def _graph_del(self, key: Any) -> None:
        list.__delitem__(self, key)
        if self._marks is not None:
            del self._marks[key]

    @classmethod
    def _graph_create(cls) -> List:
        return cls.__new__(cls)

    def _graph_fill(self, items: Iterable[tuple[Any, Any]]) -> None:
        list.clear(self)
        list.extend(self, (v for _, v in items))
        if self._marks is not None and len(self._marks) != len(self):
            self._marks = None

    def _graph_mark_seen(self) -> None:
        self._seen = True

    def _restore_marks(self, marks: tuple) -> None:
        self._marks = [None] * len(self)
        for key, mark in marks:
            self._marks[key] = mark

    def _graph_trace(self) -> Any:
        return self._trace

    def __reduce__(self) -> Any:
        return (_rebuild_list, (type(self), list(self), self._marks, self._plain))

    def __repr__(self) -> str:
        return f"List({list.__repr__(self)})"


def _identity(x: Any) -> Any:
    return x


# -- Dict ------------------------------------------------------------------------------------


def _rebuild_dict(cls: type, items: dict, marks: dict | None, plain: bool) -> Dict:
    new = cls._graph_create()
    dict.update(new, items)
    new._marks = marks
    new._plain = plain
    return new


class Dict(GraphNode, TrackedMapping):
    """A dict whose mutations are tracked; plain dicts assigned to Objects become one. Values
    are data or static as attributes would be (``nnx.data`` / ``nnx.static`` choose)."""

    __slots__ = ("_seen", "_trace", "_marks", "_plain", "__weakref__")

    def __new__(cls, *args: Any, **kwargs: Any) -> Dict:
        obj = dict.__new__(cls)
        obj._seen = False
        obj._trace = current_trace()
        obj._marks = None
        obj._plain = False
        return obj

    def __init__(self, *args: Any, **kwargs: Any):
        dict.__init__(self)
        for k, v in dict(*args, **kwargs).items():
            self._store(k, v)

    def _store(self, key: Any, value: Any) -> None:
        value, mark = unmark(value)
        marked = None if self._marks is None else self._marks.get(key)
        marked = previous_mark(marked, dict.get(self, key, MISSING))
        value, mark = classify(self, key, value, mark, marked)
        dict.__setitem__(self, key, value)
        if mark is not None:
            if self._marks is None:
                self._marks = {}
            self._marks[key] = mark

    def _forget(self, key: Any) -> None:
        if self._marks is not None:
            self._marks.pop(key, None)

    def _before_change(self) -> None:
        check_trace(self, self._trace)
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

    def _graph_forced(self, key: Any) -> str | None:
        marks = self._marks
        return None if marks is None else marks.get(key)

    def _graph_get(self, key: Any) -> Any:
        return dict.__getitem__(self, key)

    def _graph_set(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)

    def _graph_del(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._forget(key)

    @classmethod
    def _graph_create(cls) -> Dict:
        return cls.__new__(cls)

    def _graph_fill(self, items: Iterable[tuple[Any, Any]]) -> None:
        dict.clear(self)
        for k, v in items:
            dict.__setitem__(self, k, v)

    def _graph_mark_seen(self) -> None:
        self._seen = True

    def _restore_marks(self, marks: tuple) -> None:
        self._marks = dict(marks)

    def _graph_trace(self) -> Any:
        return self._trace

    def __reduce__(self) -> Any:
        return (_rebuild_dict, (type(self), dict(self), self._marks, self._plain))

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
    """Data children and aux data ``(data keys, statics, marks)``. The marks (explicit ones,
    and ``INFERRED`` for the other data children) go to the copy a pytree unflatten makes, so
    there too a child stays data whatever it is replaced by (``jax.tree.map(lambda v: 0,
    model)`` is a prefix of ``model``)."""
    data_keys, children, statics, marks = [], [], [], []
    for key, value in node._graph_items():
        forced = node._graph_forced(key)
        if forced in (DATA, INFERRED) or (forced is None and _data.holds_data(value)):
            data_keys.append(key)
            children.append(value)
            marks.append((key, DATA if forced == DATA else INFERRED))
        else:
            statics.append((key, _StaticValue(value)))
            if forced is not None:
                marks.append((key, forced))
    return data_keys, children, (tuple(data_keys), tuple(statics), tuple(marks))


def _pytree_flatten_with_keys(node: GraphNode):
    data_keys, children, aux = _pytree_partition(node)
    return [(_pytree_key(k), c) for k, c in zip(data_keys, children, strict=True)], aux


def _pytree_flatten(node: GraphNode):
    _, children, aux = _pytree_partition(node)
    return children, aux


def _make_pytree_unflatten(cls: type[GraphNode]):
    def unflatten(aux: tuple, children: Iterable[Any]) -> GraphNode:
        data_keys, statics, marks = aux
        items = list(zip(data_keys, children, strict=True)) + [(k, s.value) for k, s in statics]
        items.sort(key=lambda kv: key_order(kv[0]))
        node = cls._graph_create()
        node._graph_fill(items)
        if marks:
            node._restore_marks(marks)
        return node

    return unflatten


def register_pytree_node(cls: type[GraphNode]) -> None:
    """Register a graph-node class as a JAX pytree (data attributes are its children)."""
    jax.tree_util.register_pytree_with_keys(
        cls, _pytree_flatten_with_keys, _make_pytree_unflatten(cls), flatten_func=_pytree_flatten
    )

register_pytree_node(List)
register_pytree_node(Dict)
