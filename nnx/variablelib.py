"""Variables: boxes that hold one value (usually an array) plus free-form metadata."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nnx import _placement as placement
from nnx import _structure as structure
from nnx._display import ReprParts, format_bytes, object_repr
from nnx._statics import Static
from nnx._tracing import check_same_trace, current_trace

_SLOTS = frozenset({"_raw_value", "_metadata", "_trace", "_seen"})


_SHARDING_KEYS = frozenset(placement.SHARDING_KEYS)


class VariableMetadata:
    """A value plus metadata, returned by initializers wrapped with ``with_metadata``.

    Constructing a Variable from it unwraps the value and adds the metadata.
    """

    __slots__ = ("raw_value", "metadata")

    def __init__(self, raw_value: Any, metadata: dict[str, Any]):
        self.raw_value = raw_value
        self.metadata = metadata


class Variable:
    """A mutable box holding a value and metadata; subclasses name kinds of state.

    ``v.value`` (or ``v[...]``, ``v.get_value()``) reads the value and assigning it writes.
    Arithmetic, comparison and indexing act on the value; ``v += 1`` updates the Variable in
    place. Keyword arguments are kept as metadata, readable as attributes (``v.sharding``).

    Args:
      value: the initial value, usually a ``jax.Array``.
      **metadata: free-form metadata kept beside the value.
    """

    __slots__ = (*_SLOTS, "__weakref__")
    # Above numpy's: ``np_array @ v`` and ``np_array + v`` defer to the Variable's reflected
    # operators instead of converting it through ``__array__`` (which fails under a trace).
    __array_priority__ = 100

    def __init__(self, value: Any, **metadata: Any):
        if isinstance(value, Variable):
            metadata = {**value._metadata, **metadata}
            value = value._raw_value
        elif isinstance(value, VariableMetadata):
            metadata = {**value.metadata, **metadata}
            value = value.raw_value
        if metadata and not _SHARDING_KEYS.isdisjoint(metadata):
            names = placement.sharding_names_of(metadata)
            if names is not None:
                value = placement.shard_value(value, names, metadata.get("mesh"))
        object.__setattr__(self, "_raw_value", value)
        object.__setattr__(self, "_metadata", metadata)
        object.__setattr__(self, "_trace", current_trace())
        object.__setattr__(self, "_seen", False)

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    # -- value access -------------------------------------------------------------------
    @property
    def value(self) -> Any:
        return self._raw_value

    @value.setter
    def value(self, value: Any) -> None:
        self.set_value(value)

    @property
    def raw_value(self) -> Any:
        return self._raw_value

    @raw_value.setter
    def raw_value(self, value: Any) -> None:
        self.set_value(value)

    def get_value(self) -> Any:
        """Return the held value."""
        return self._raw_value

    def set_value(self, value: Any) -> None:
        """Replace the held value; raises if called from a JAX trace other than the creator's."""
        if isinstance(value, Variable):
            value = value._raw_value
        check_same_trace(self, self._trace)
        object.__setattr__(self, "_raw_value", value)

    def __getitem__(self, index: Any) -> Any:
        if index is Ellipsis:
            return self._raw_value
        return self._raw_value[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(value, Variable):
            value = value._raw_value
        if index is Ellipsis:
            self.set_value(value)
        elif isinstance(self._raw_value, np.ndarray):
            check_same_trace(self, self._trace)
            self._raw_value[index] = value
        else:
            self.set_value(self._raw_value.at[index].set(value))

    # -- metadata -----------------------------------------------------------------------
    def get_metadata(self, name: str | None = None, default: Any = ...) -> Any:
        """Return all metadata as a dict, or the entry ``name`` (``default`` if absent)."""
        if name is None:
            return dict(self._metadata)
        if name in self._metadata:
            return self._metadata[name]
        if default is ...:
            raise KeyError(f"{type(self).__name__} has no metadata {name!r}; it has {sorted(self._metadata)}")
        return default

    def set_metadata(self, name: str | None = None, value: Any = None, **metadata: Any) -> None:
        """Set one metadata entry (``set_metadata('k', v)``) or several (``set_metadata(k=v)``)."""
        check_same_trace(self, self._trace)
        if name is not None:
            metadata[name] = value
        self._metadata.update(metadata)
        if self._seen:
            structure.bump()

    def has_metadata(self, name: str) -> bool:
        return name in self._metadata

    def del_metadata(self, name: str) -> None:
        check_same_trace(self, self._trace)
        del self._metadata[name]
        if self._seen:
            structure.bump()

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: metadata first, then the value's attributes.
        if name.startswith("__") or name in _SLOTS:
            raise AttributeError(name)
        metadata = object.__getattribute__(self, "_metadata")
        if name in metadata:
            return metadata[name]
        value = object.__getattribute__(self, "_raw_value")
        try:
            return getattr(value, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__} has no metadata or value attribute {name!r}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("value", "raw_value"):
            object.__setattr__(self, name, value)  # the property setters
        else:
            self.set_metadata(name, value)

    def __delattr__(self, name: str) -> None:
        self.del_metadata(name)

    # -- conveniences -------------------------------------------------------------------
    @property
    def type(self) -> type[Variable]:
        return type(self)

    @property
    def var_type(self) -> type[Variable]:
        return type(self)

    @property
    def shape(self) -> tuple[int, ...]:
        return np.shape(self._raw_value)

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self._raw_value) if self._raw_value is not None else None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def copy(self, value: Any = ..., **metadata: Any) -> Variable:
        """A new Variable of the same type: same value (or ``value``) and metadata, updated."""
        return build_variable(
            type(self), self._raw_value if value is ... else value, {**self._metadata, **metadata}
        )

    replace = copy

    def update_from(self, other: Variable) -> None:
        """Take the value and metadata of ``other`` in place (used by ``nnx.update``)."""
        check_same_trace(self, self._trace)
        object.__setattr__(self, "_raw_value", other._raw_value)
        if other._metadata != self._metadata:
            self._metadata.clear()
            self._metadata.update(other._metadata)
            if self._seen:
                structure.bump()

    def __jax_array__(self) -> Any:
        return self._raw_value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self._raw_value, dtype=dtype)

    def __len__(self) -> int:
        return len(self._raw_value)

    def __iter__(self):
        return iter(self._raw_value)

    def __bool__(self) -> bool:
        return bool(self._raw_value)

    def __float__(self) -> float:
        return float(self._raw_value)

    def __int__(self) -> int:
        return int(self._raw_value)

    def __index__(self) -> int:
        return operator.index(self._raw_value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._raw_value(*args, **kwargs)

    __hash__ = object.__hash__

    def _repr_parts(self) -> ReprParts:
        value = self._raw_value
        size, nbytes = getattr(value, "size", None), getattr(value, "nbytes", None)
        comment = f"{size:,} ({format_bytes(nbytes)})" if size is not None and nbytes is not None else ""
        return ReprParts(type(self).__name__, [("value", value), *self._metadata.items()], comment=comment)

    __repr__ = object_repr

    def __getstate__(self) -> dict[str, Any]:
        return {"raw_value": self._raw_value, "metadata": self._metadata}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_raw_value", state["raw_value"])
        object.__setattr__(self, "_metadata", state["metadata"])
        object.__setattr__(self, "_trace", current_trace())
        object.__setattr__(self, "_seen", False)


def _value_of(x: Any) -> Any:
    return x._raw_value if isinstance(x, Variable) else x


def _binary(op: Callable[[Any, Any], Any]) -> tuple[Callable, Callable, Callable]:
    def forward(self: Variable, other: Any) -> Any:
        return op(self._raw_value, _value_of(other))

    def reflected(self: Variable, other: Any) -> Any:
        return op(_value_of(other), self._raw_value)

    def inplace(self: Variable, other: Any) -> Variable:
        self.set_value(op(self._raw_value, _value_of(other)))
        return self

    return forward, reflected, inplace


for _name, _op in [
    ("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
    ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("mod", operator.mod),
    ("pow", operator.pow), ("matmul", operator.matmul), ("and", operator.and_),
    ("or", operator.or_), ("xor", operator.xor), ("lshift", operator.lshift),
    ("rshift", operator.rshift),
]:
    _f, _r, _i = _binary(_op)
    setattr(Variable, f"__{_name}__", _f)
    setattr(Variable, f"__r{_name}__", _r)
    setattr(Variable, f"__i{_name}__", _i)

for _name, _op in [
    ("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
    ("eq", operator.eq), ("ne", operator.ne),
]:
    setattr(Variable, f"__{_name}__", _binary(_op)[0])

for _name, _op in [
    ("neg", operator.neg), ("pos", operator.pos), ("abs", operator.abs), ("invert", operator.invert),
]:
    setattr(Variable, f"__{_name}__", (lambda op: lambda self: op(self._raw_value))(_op))

Variable.__hash__ = object.__hash__  # __eq__ acts on values; identity hashing keeps Variables usable as keys


def build_variable(cls: type[Variable], value: Any, metadata: dict[str, Any]) -> Variable:
    """A Variable of type ``cls`` made without calling ``__init__`` (owned by the current trace)."""
    new = object.__new__(cls)
    object.__setattr__(new, "_raw_value", value)
    object.__setattr__(new, "_metadata", metadata)
    object.__setattr__(new, "_trace", current_trace())
    object.__setattr__(new, "_seen", False)
    return new


def metadata_key(metadata: dict[str, Any]) -> tuple:
    """A hashable, order-independent key for a metadata dict."""
    return tuple((k, Static(v)) for k, v in sorted(metadata.items()))


def _flatten_with_keys(v: Variable):
    return ((jax.tree_util.GetAttrKey("value"), v._raw_value),), metadata_key(v._metadata)


def _flatten(v: Variable):
    return (v._raw_value,), metadata_key(v._metadata)


def _make_unflatten(cls: type[Variable]):
    def unflatten(aux: tuple, children: tuple) -> Variable:
        return build_variable(cls, children[0], {k: s.value for k, s in aux})

    return unflatten


def _register_pytree(cls: type[Variable]) -> None:
    jax.tree_util.register_pytree_with_keys(
        cls, _flatten_with_keys, _make_unflatten(cls), flatten_func=_flatten
    )


_register_pytree(Variable)


class Param(Variable):
    """A trainable parameter; the default target of ``nnx.grad`` and ``nnx.Optimizer``."""


class BatchStat(Variable):
    """Running statistics, such as BatchNorm's mean and variance."""


class Cache(Variable):
    """Cached values, such as an attention layer's key/value cache for decoding."""


class Intermediate(Variable):
    """Values recorded during a call with ``Module.sow``."""


class Perturbation(Intermediate):
    """Zero-valued intermediates used to take gradients with respect to activations."""


class OptState(Variable):
    """Optimizer state (moments, step counters) held by ``nnx.Optimizer``."""


OptArray = OptState
OptVariable = OptState


class RngState(Variable):
    """State of a random-number stream."""


class RngKey(RngState):
    """The key of a random-number stream."""


class RngCount(RngState):
    """How many keys a random-number stream has handed out."""


class LoRAParam(Param):
    """A low-rank adapter parameter; a ``Param`` filter matches it too."""


_NAME_TO_TYPE: dict[str, type[Variable]] = {
    "params": Param,
    "batch_stats": BatchStat,
    "cache": Cache,
    "intermediates": Intermediate,
    "perturbations": Perturbation,
}


def register_variable_name(name: str, typ: type[Variable]) -> None:
    """Map a collection name (as used by ``sow('name', ...)``) to a Variable type."""
    _NAME_TO_TYPE[name] = typ


def variable_type_from_name(name: str) -> type[Variable]:
    """The Variable type for a collection name, creating a new subclass for unknown names."""
    if name not in _NAME_TO_TYPE:
        _NAME_TO_TYPE[name] = type(name, (Variable,), {"__module__": __name__})
    return _NAME_TO_TYPE[name]


def variable_name_from_type(typ: type[Variable]) -> str:
    """The collection name for a Variable type (its registered name, else its class name)."""
    for name, t in _NAME_TO_TYPE.items():
        if t is typ:
            return name
    return typ.__name__


def with_metadata(initializer: Callable[..., Any], **metadata: Any) -> Callable[..., VariableMetadata]:
    """Wrap an initializer so the Variable built from its output carries ``metadata``."""

    def wrapped(*args: Any, **kwargs: Any) -> VariableMetadata:
        return VariableMetadata(initializer(*args, **kwargs), dict(metadata))

    return wrapped
