"""Data or static: which values held by a graph node are state and which belong to the GraphDef.

The rules are Flax 0.12's. A child is *data* (a pytree child, a State leaf) when it is marked
with ``nnx.data(...)`` or declared so by its class (``x: T = nnx.data()``, ``x: nnx.Data[T]``),
or, unmarked, when its value is a Variable, an array, a graph node or a type registered with
``register_data_type``; anything else is *static*. A static child must not contain data: a
plain list holding arrays, or ``nnx.static(array)``, raises and says how to fix it.

Beyond Flax, for code written for earlier versions (where lists and dicts were graph nodes):
an unmarked container that holds data when it is assigned is data (``self.layers =
[Linear(...), ...]``, a tuple of arrays, an optimizer state), plain lists and dicts being
stored as a tracked ``nnx.List`` / ``nnx.Dict`` - unless it is a dataclass field, which is
declared and so follows Flax. A plain list or dict assigned without data (``self.ls = []``)
stays static: if it holds raw arrays when construction ends, that raises, as in Flax.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import jax
import numpy as np

from nnx._node import GraphNode
from nnx._typing import ARRAY_TYPES
from nnx.variablelib import Variable

A = TypeVar("A")
T = TypeVar("T", bound=type)

DATA, STATIC = "data", "static"
# Recorded for a child found to be data by its value: it stays data when reassigned (as in
# Flax), but unlike an explicit mark it does not make a graph flatten store its non-array
# parts (a string in a tuple of modules) as state.
INFERRED = "inferred"
_FIELD_KEY = "nnx_status"  # the metadata entry of a dataclass field made by data() / static()
_DATA_TAG, _STATIC_TAG = "__data__", "__static__"

Data = Annotated[A, _DATA_TAG]
"""``x: nnx.Data[T]`` in a class body declares attribute ``x`` as data for every instance."""
Static = Annotated[A, _STATIC_TAG]
"""``x: nnx.Static[T]`` in a class body declares attribute ``x`` as static for every instance."""

_SCALARS = (int, float, complex, str, bool, bytes, type(None), type, np.dtype)
_DATA_TYPES: set[type] = set()


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Marker:
    """A value wrapped by ``nnx.data`` / ``nnx.static``; unwrapped where it is stored."""

    __slots__ = ("value", "kind")

    def __init__(self, value: Any, kind: str):
        self.value = value
        self.kind = kind

    def __repr__(self) -> str:
        return f"nnx.{self.kind}({self.value!r})"


def _mark(kind: str, value: Any, field_kwargs: dict[str, Any]) -> Any:
    if value is not MISSING:
        if field_kwargs:
            raise TypeError(
                f"nnx.{kind}() takes either one value (to assign to an attribute) or dataclass "
                f"field keywords (in a class body), not both; got keywords {sorted(field_kwargs)}."
            )
        return Marker(value, kind)
    metadata = dict(field_kwargs.pop("metadata", None) or {})
    if _FIELD_KEY in metadata:
        raise ValueError(f"nnx.{kind}(metadata=...) must not set the {_FIELD_KEY!r} entry.")
    metadata[_FIELD_KEY] = kind
    return dataclasses.field(**field_kwargs, metadata=metadata)


def data(value: Any = MISSING, /, **field_kwargs: Any) -> Any:
    """Mark a value as data: ``self.x = nnx.data(value)``, or in a dataclass body
    ``x: T = nnx.data(default=...)``; the attribute stays data when reassigned later.

    Args:
      value: the value to assign (omit it for the field form).
      **field_kwargs: ``dataclasses.field`` arguments (``default``, ``default_factory``...).
    """
    return _mark(DATA, value, field_kwargs)


def static(value: Any = MISSING, /, **field_kwargs: Any) -> Any:
    """Mark a value as static (kept in the GraphDef): ``self.x = nnx.static(value)``, or in a
    dataclass body ``x: T = nnx.static()``. A static value must not contain arrays or Variables.

    Args:
      value: the value to assign (omit it for the field form).
      **field_kwargs: ``dataclasses.field`` arguments (``default``, ``default_factory``...).
    """
    return _mark(STATIC, value, field_kwargs)


def unmark(value: Any) -> tuple[Any, str | None]:
    """``(value, kind)`` for a Marker, ``(value, None)`` for anything else."""
    if type(value) is Marker:
        return value.value, value.kind
    return value, None


def register_data_type(type_: T, /) -> T:
    """Make values of ``type_`` data when assigned to a graph node, without ``nnx.data``.
    Usable as a class decorator."""
    _DATA_TYPES.add(type_)
    return type_


def is_data(value: Any, /) -> bool:
    """Whether ``value`` is data by its type: a Variable, an array, a graph node (Module, Rngs,
    ``nnx.List``...) or a registered data type. Containers are not: ``[jnp.ones(2)]`` is not."""
    return isinstance(value, (Variable, GraphNode, *ARRAY_TYPES)) or type(value) in _DATA_TYPES


def _is_leaf_data(x: Any) -> bool:
    # a tracked List/Dict that replaced a plain list or dict is looked into, like the original
    return is_data(x) and not (isinstance(x, GraphNode) and x._plain)


def _scan(value: Any) -> list[Any]:
    """The data inside ``value`` (looking through pytrees and plain-list Lists), in order."""
    found: list[Any] = []
    seen: set[int] = set()

    def walk(x: Any) -> None:
        if _is_leaf_data(x):
            found.append(x)
            return
        if type(x) is Marker:
            raise ValueError(
                f"Found {x!r} inside a value of type {type(value).__name__}: nnx.data(...) and "
                "nnx.static(...) mark a value assigned directly to an attribute (or an "
                "nnx.List / nnx.Dict item); they cannot be nested inside other containers."
            )
        if isinstance(x, _SCALARS) or id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, dict):
            children = list(x.values())
        elif isinstance(x, list | tuple):
            children = list(x)
        else:
            children = jax.tree_util.tree_leaves(x, is_leaf=lambda y: y is not x)
            if len(children) == 1 and children[0] is x:
                return  # not a container
        for child in children:
            walk(child)

    walk(value)
    return found


def has_data(value: Any, /) -> list[Any]:
    """The data values (Variables, arrays, graph nodes...) inside ``value``, in pytree order."""
    return _scan(value)


def _is_plain_container(value: Any) -> bool:
    return type(value) in (list, dict) or (isinstance(value, GraphNode) and value._plain)


def _names(values: list[Any]) -> str:
    return ", ".join(sorted({type(v).__name__ for v in values}))


def _owner_name(owner: Any) -> str:
    return type(owner).__name__


def data_in_static_error(owner: Any, key: Any, value: Any, found: list[Any]) -> ValueError:
    """The error for data inside an unmarked static value (a plain list holding arrays)."""
    return ValueError(
        f"Found data on value of type {type(value).__name__} assigned to the static attribute "
        f"{key!r} of {_owner_name(owner)}: it holds {_names(found)}, and a static value is kept "
        "in the GraphDef, so its arrays would not be state. Either:\n"
        f"  - use nnx.List(...) / nnx.Dict(...) instead of a plain list or dict,\n"
        f"  - mark it as data on assignment: _.{key} = nnx.data(...),\n"
        f"  - declare it in the class body: {key}: {type(value).__name__} = nnx.data(),\n"
        "  - or remove the data from it if it is meant to be static."
    )


def data_in_marked_static_error(owner: Any, key: Any, value: Any, found: list[Any]) -> ValueError:
    """The error for ``nnx.static(value)`` where ``value`` holds data."""
    return ValueError(
        f"Found data in value of type {type(value).__name__} annotated with nnx.static(...) for "
        f"attribute {key!r} of {_owner_name(owner)}: it holds {_names(found)}. A static value "
        "cannot contain arrays, Variables or graph nodes; assign it without nnx.static, or "
        "with nnx.data(...)."
    )


def unexpected_data_error(owner: Any, key: Any, value: Any, found: list[Any]) -> ValueError:
    """The error for data found in a static attribute when construction ends (appended to a
    plain list after assignment, or given for a field declared static)."""
    return ValueError(
        f"Found unexpected data on value of type {type(value).__name__} in the static attribute "
        f"{key!r} of {_owner_name(owner)} after construction: it holds {_names(found)}. "
        f"Assign it as data (_.{key} = nnx.data(...), or nnx.List / nnx.Dict for a list or "
        f"dict), declare it with {key}: {type(value).__name__} = nnx.data() in the class "
        "body, or keep the data out of it."
    )


def infer_kind(owner: Any, key: Any, value: Any, declared_field: bool) -> str:
    """The kind of an unmarked value assigned to ``owner[key]``; raises for a dataclass field
    declared as a plain list or dict that holds data."""
    if is_data(value) and not (isinstance(value, GraphNode) and value._plain):
        return DATA
    if isinstance(value, _SCALARS):
        return STATIC
    found = _scan(value)
    if not found:
        return STATIC
    if declared_field and _is_plain_container(value):
        raise data_in_static_error(owner, key, value, found)
    return DATA


def only_nodes(found: list[Any]) -> bool:
    """Whether data added to a static plain list or dict is allowed there when construction
    ends: graph nodes and Variables are (``self.layers = []`` then ``append(Linear(...))``)."""
    return all(isinstance(x, GraphNode | Variable) for x in found)


def check_kind(owner: Any, key: Any, value: Any, kind: str, explicit: bool) -> None:
    """Raise if ``value``, marked or declared ``kind``, is static yet holds data."""
    if kind == STATIC:
        found = _scan(value)
        if found:
            error = data_in_marked_static_error if explicit else unexpected_data_error
            raise error(owner, key, value, found)


def holds_data(value: Any) -> bool:
    """Whether an unmarked value counts as data (the pytree flatten of a graph node asks)."""
    if is_data(value) and not (isinstance(value, GraphNode) and value._plain):
        return True
    if isinstance(value, _SCALARS):
        return False
    return bool(_scan(value))


# -- class-level declarations ---------------------------------------------------------------

_ANNOTATION = re.compile(r"^(?:\w+\.)*(Data|Static)\[")


def _annotation_kind(annotation: Any) -> str | None:
    if isinstance(annotation, str):
        m = _ANNOTATION.match(annotation.strip())
        return None if m is None else (DATA if m.group(1) == "Data" else STATIC)
    tags = getattr(annotation, "__metadata__", ())
    if _DATA_TAG in tags:
        return DATA
    if _STATIC_TAG in tags:
        return STATIC
    return None


def declared_kinds(cls: type, inherited: dict[str, str]) -> dict[str, str]:
    """The kinds ``cls`` declares for its attributes: ``nnx.Data[...]`` / ``nnx.Static[...]``
    annotations and ``nnx.data()`` / ``nnx.static()`` fields, on top of ``inherited``."""
    own = cls.__dict__.get("__annotations__", {})
    fields = {k: v for k, v in cls.__dict__.items() if isinstance(v, dataclasses.Field)}
    if not own and not fields:
        return inherited
    kinds = dict(inherited)
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
        annotations = {k: hints.get(k, v) for k, v in own.items()}
    except Exception:  # forward references that cannot be resolved here: read the strings
        annotations = own
    for name, annotation in annotations.items():
        kind = _annotation_kind(annotation)
        if kind is not None:
            kinds[name] = kind
    for name, field in fields.items():
        kind = field.metadata.get(_FIELD_KEY)
        if kind is None:
            continue
        if name in own and _annotation_kind(annotations.get(name)) not in (None, kind):
            raise ValueError(
                f"{cls.__name__}.{name} is annotated as {_annotation_kind(annotations[name])} "
                f"but assigned nnx.{kind}(); use one of them."
            )
        kinds[name] = kind
    return kinds


def dataclass(cls: type | None = None, /, **kwargs: Any) -> Any:
    """``dataclasses.dataclass`` for graph nodes (no generated ``__repr__``, so the nnx repr is
    kept), understanding ``nnx.data()`` / ``nnx.static()`` fields.

    Args:
      cls: the class (or use ``@nnx.dataclass(...)`` with keywords).
      **kwargs: ``dataclasses.dataclass`` options (``init``, ``eq``, ``kw_only``, ``frozen``...).
    """
    kwargs.setdefault("repr", False)

    def wrap(c: type) -> type:
        return dataclasses.dataclass(c, **kwargs)

    return wrap if cls is None else wrap(cls)


def is_dataclass_field(owner: Any, key: Any) -> bool:
    """Whether ``key`` is a field of ``owner``'s dataclass."""
    fields: Callable | dict = getattr(type(owner), "__dataclass_fields__", None) or {}
    return key in fields
