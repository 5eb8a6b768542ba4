"""Variables: boxes that hold one value (usually an array) plus free-form metadata."""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from nnx import _placement as placement
from nnx import _structure as structure
from nnx._display import ReprParts, format_bytes, object_repr
from nnx._statics import Static
from nnx._tracing import check_same_trace, current_trace

A = TypeVar("A")
F = TypeVar("F", bound=Callable[..., Any])

_SLOTS = frozenset({"_raw_value", "_metadata", "_trace", "_seen"})


_SHARDING_KEYS = frozenset(placement.SHARDING_KEYS)


class _Missing:
    """The "not given" marker of ``get_value(index=...)`` / ``set_value(..., index=...)``."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


# -- defaults for new Variables ------------------------------------------------------------


class _DefaultsStore(threading.local):
    """Per-thread defaults recorded in every new Variable's required metadata."""

    def __init__(self) -> None:
        self.values = {"hijax": False, "ref": False, "eager_sharding": True}


_DEFAULTS = _DefaultsStore()


class VarDefaults(Mapping):
    """The defaults new Variables get for ``hijax`` and ``ref``, as a mapping."""

    __slots__ = ("hijax", "ref")

    def __init__(self, hijax: bool, ref: bool):
        object.__setattr__(self, "hijax", hijax)
        object.__setattr__(self, "ref", ref)

    def __getitem__(self, key: str) -> Any:
        if key not in self.__slots__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__slots__)

    def __len__(self) -> int:
        return len(self.__slots__)

    def __repr__(self) -> str:
        return f"VarDefaults(hijax={self.hijax}, ref={self.ref})"


class DefaultsChange:
    """A change of the Variable defaults, already applied when this object is made.

    Leaving it as a context manager (``with nnx.var_defaults(...):``) restores all defaults as
    they were before it (changes made inside the block end with it too); used as a decorator,
    the change applies only while the decorated function runs.
    """

    def __init__(self, changes: dict[str, bool]):
        self._changes = changes
        self._previous = dict(_DEFAULTS.values)
        _DEFAULTS.values.update(changes)

    def __enter__(self) -> DefaultsChange:
        return self

    def __exit__(self, *exc: Any) -> None:
        _DEFAULTS.values.update(self._previous)

    def __call__(self, f: F) -> F:
        _DEFAULTS.values.update(self._previous)  # a decorator applies the change per call only
        changes = self._changes

        @functools.wraps(f)
        def with_defaults(*args: Any, **kwargs: Any) -> Any:
            with DefaultsChange(changes):
                return f(*args, **kwargs)

        return with_defaults  # type: ignore[return-value]


def var_defaults(*, hijax: bool | None = None, ref: bool | None = None) -> Any:
    """The current Variable defaults, or (given arguments) change them.

    Without arguments returns a ``VarDefaults`` mapping. With arguments the change applies at
    once and a ``DefaultsChange`` is returned: ``with nnx.var_defaults(hijax=False): ...``
    restores the previous defaults after the block, and ``@nnx.var_defaults(...)`` applies them
    while the decorated function runs. This nnx has no hijax or ref Variables (its transforms
    carry Variable updates instead), so creating a Variable with either set raises.

    Args:
      hijax: the default ``hijax`` metadata of new Variables.
      ref: the default ``ref`` metadata of new Variables.
    """
    changes = {k: bool(v) for k, v in (("hijax", hijax), ("ref", ref)) if v is not None}
    if not changes:
        return VarDefaults(_DEFAULTS.values["hijax"], _DEFAULTS.values["ref"])
    return DefaultsChange(changes)


def use_eager_sharding(value: bool) -> DefaultsChange:
    """Set whether new Variables with sharding metadata are sharded when created.

    Applies at once; as a context manager the previous setting comes back after the block.

    Args:
      value: True to shard at creation (the default), False to only record the metadata.
    """
    return DefaultsChange({"eager_sharding": bool(value)})


def using_eager_sharding() -> bool:
    """Whether new Variables with sharding metadata are sharded when created."""
    return _DEFAULTS.values["eager_sharding"]


# -- Variable --------------------------------------------------------------------------------

REQUIRED_METADATA = ("hijax", "ref", "eager_sharding")


class VariableMetadata:
    """A value plus metadata, returned by initializers wrapped with ``with_metadata``.

    Constructing a Variable from it unwraps the value and adds the metadata.
    """

    __slots__ = ("raw_value", "metadata")

    def __init__(self, raw_value: Any, metadata: dict[str, Any]):
        self.raw_value = raw_value
        self.metadata = metadata


def _required(metadata: dict[str, Any], hijax: Any, ref: Any, eager_sharding: Any) -> None:
    """Fill the required entries of a new Variable's ``metadata`` in place."""
    for name, given in (("hijax", hijax), ("ref", ref), ("eager_sharding", eager_sharding)):
        if given is not None:
            metadata[name] = given
        elif name not in metadata:
            metadata[name] = _DEFAULTS.values[name]
    if metadata["hijax"] or metadata["ref"]:
        raise ValueError(
            "Variable(hijax=True) / Variable(ref=True): this nnx has no hijax or mutable-array "
            "Variables; nnx transforms (nnx.jit, nnx.grad, ...) carry Variable updates instead. "
            "Create the Variable with hijax=False, ref=False (the defaults)."
        )


class Variable(Generic[A]):
    """A mutable box holding a value and metadata; subclasses name kinds of state.

    ``v[...]`` (or ``v.get_value()``, ``v.value``) reads the value and ``v[...] = x`` (or
    ``set_value``, ``v.value = x``) writes it; subclasses may override ``get_value`` and
    ``set_value`` and every read and write goes through them. Arithmetic, comparison and
    indexing act on the value; ``v += 1`` updates the Variable in place. Keyword arguments are
    kept as metadata, readable as attributes (``v.out_sharding``); every Variable also records
    ``hijax``, ``ref`` and ``eager_sharding``. ``nnx.Param[jax.Array]`` is a type annotation.

    Args:
      value: the initial value, usually a ``jax.Array``.
      hijax, ref: must be False (the defaults, see ``var_defaults``).
      eager_sharding: shard the value at creation when the metadata names a sharding
        (default: ``using_eager_sharding()``).
      **metadata: free-form metadata kept beside the value.
    """

    __slots__ = (*_SLOTS, "__weakref__")
    # Above numpy's: ``np_array @ v`` and ``np_array + v`` defer to the Variable's reflected
    # operators instead of converting it through ``__array__`` (which fails under a trace).
    __array_priority__ = 100
    required_metadata = frozenset(REQUIRED_METADATA)

    def __init__(
        self,
        value: Any,
        *,
        hijax: bool | None = None,
        ref: bool | None = None,
        eager_sharding: bool | None = None,
        **metadata: Any,
    ):
        if isinstance(value, Variable):
            metadata = {**value._metadata, **metadata}
            value = value._raw_value
        elif isinstance(value, VariableMetadata):
            metadata = {**value.metadata, **metadata}
            value = value.raw_value
        _required(metadata, hijax, ref, eager_sharding)
        if metadata["eager_sharding"] and not _SHARDING_KEYS.isdisjoint(metadata):
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
        return self.get_value()

    @value.setter
    def value(self, value: Any) -> None:
        self.set_value(value)

    @property
    def raw_value(self) -> Any:
        return self._raw_value

    @raw_value.setter
    def raw_value(self, value: Any) -> None:
        self.set_raw_value(value)

    def get_raw_value(self) -> Any:
        """The stored value, bypassing any ``get_value`` override."""
        return self._raw_value

    def set_raw_value(self, value: Any) -> None:
        """Store ``value`` as it is, bypassing any ``set_value`` override."""
        check_same_trace(self, self._trace)
        object.__setattr__(self, "_raw_value", value)

    def get_value(self, *, index: Any = MISSING) -> Any:
        """The held value, or ``value[index]`` when ``index`` is given (``...``: all of it)."""
        if index is MISSING or index is Ellipsis:
            return self._raw_value
        return self._raw_value[index]

    def set_value(self, value: Any, *, index: Any = MISSING) -> None:
        """Replace the held value (or the entries at ``index``; ``...`` replaces all of it).

        Raises ``TraceContextError`` if called from a JAX trace other than the creator's.
        """
        if isinstance(value, Variable):
            value = value._raw_value
        check_same_trace(self, self._trace)
        if index is MISSING or index is Ellipsis:
            object.__setattr__(self, "_raw_value", value)
        elif isinstance(self._raw_value, np.ndarray):
            self._raw_value[index] = value
        else:
            object.__setattr__(self, "_raw_value", self._raw_value.at[index].set(value))

    def __getitem__(self, index: Any) -> Any:
        return self.get_value(index=index)

    def __setitem__(self, index: Any, value: Any) -> None:
        self.set_value(value, index=index)

    # -- metadata -----------------------------------------------------------------------
    def get_metadata(
        self, name: str | None = None, default: Any = ..., *, exclude_required: bool = False
    ) -> Any:
        """All metadata as a dict, or the entry ``name`` (``default`` if absent).

        Args:
          name: the entry to read; None for a copy of all metadata.
          default: returned when ``name`` is absent (raises KeyError when not given).
          exclude_required: leave out ``hijax``, ``ref`` and ``eager_sharding``.
        """
        if name is None:
            if exclude_required:
                return {k: v for k, v in self._metadata.items() if k not in self.required_metadata}
            return dict(self._metadata)
        if name in self._metadata:
            return self._metadata[name]
        if default is ...:
            raise KeyError(f"{type(self).__name__} has no metadata {name!r}; it has {sorted(self._metadata)}")
        return default

    def set_metadata(self, *args: Any, **metadata: Any) -> None:
        """Set metadata: ``set_metadata(name, value)``, ``set_metadata(**entries)``, or
        ``set_metadata(mapping)`` which replaces all metadata (required entries kept).

        ``hijax`` and ``ref`` cannot change.
        """
        check_same_trace(self, self._trace)
        if args and metadata:
            raise TypeError("set_metadata takes positional or keyword arguments, not both.")
        if len(args) > 2 or (len(args) == 1 and not isinstance(args[0], Mapping)):
            raise TypeError(
                "set_metadata expects (name, value), (mapping) or (**entries); got "
                f"{len(args)} positional argument(s) of types {[type(a).__name__ for a in args]}."
            )
        replace_all = len(args) == 1
        new = dict(args[0]) if replace_all else {args[0]: args[1]} if args else metadata
        self._check_fixed(new)
        if replace_all:
            for name in self.required_metadata:
                new.setdefault(name, self._metadata.get(name, _DEFAULTS.values[name]))
            self._metadata.clear()
        self._metadata.update(new)
        if self._seen:
            structure.bump()

    def _check_fixed(self, metadata: Mapping[str, Any]) -> None:
        for name in ("hijax", "ref"):
            if name in metadata and bool(metadata[name]) != bool(self._metadata.get(name, False)):
                raise ValueError(
                    f"{type(self).__name__}: the {name!r} metadata cannot change (it is "
                    f"{self._metadata.get(name, False)}, got {metadata[name]})."
                )

    def has_metadata(self, name: str) -> bool:
        return name in self._metadata

    def del_metadata(self, name: str) -> None:
        check_same_trace(self, self._trace)
        if name in ("hijax", "ref"):
            raise ValueError(f"{type(self).__name__}: the {name!r} metadata cannot be deleted.")
        del self._metadata[name]
        if self._seen:
            structure.bump()

    @property
    def hijax(self) -> bool:
        return self._metadata.get("hijax", False)

    @property
    def ref(self) -> bool:
        return self._metadata.get("ref", False)

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
        elif name.startswith("__"):
            # e.g. typing's ``__orig_class__`` after ``nnx.Param[int](1)``: not metadata
            raise AttributeError(f"{type(self).__name__} cannot set attribute {name!r}")
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

    def add_axis(self, axis_index: int, axis_name: Any) -> None:
        """Called after a transform (vmap, scan with ``transform_metadata``) added a mapped axis
        at ``axis_index``; a hook for subclasses, nothing by default."""

    def remove_axis(self, axis_index: int, axis_name: Any) -> None:
        """Called when a transform takes the mapped axis at ``axis_index`` away for its
        function; a hook for subclasses, nothing by default."""

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
        return self.get_value()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.get_value(), dtype=dtype)

    def __len__(self) -> int:
        return len(self.get_value())

    def __iter__(self):
        return iter(self.get_value())

    def __bool__(self) -> bool:
        return bool(self.get_value())

    def __float__(self) -> float:
        return float(self.get_value())

    def __int__(self) -> int:
        return int(self.get_value())

    def __index__(self) -> int:
        return operator.index(self.get_value())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.get_value()(*args, **kwargs)

    __hash__ = object.__hash__

    def _repr_parts(self) -> ReprParts:
        value = self.get_value()
        size, nbytes = getattr(value, "size", None), getattr(value, "nbytes", None)
        comment = f"{size:,} ({format_bytes(nbytes)})" if size is not None and nbytes is not None else ""
        shown = [(k, v) for k, v in self._metadata.items() if not _is_default_required(k, v)]
        return ReprParts(type(self).__name__, [("value", value), *shown], comment=comment)

    __repr__ = object_repr

    def __getstate__(self) -> dict[str, Any]:
        return {"raw_value": self._raw_value, "metadata": self._metadata}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_raw_value", state["raw_value"])
        object.__setattr__(self, "_metadata", state["metadata"])
        object.__setattr__(self, "_trace", current_trace())
        object.__setattr__(self, "_seen", False)


def _is_default_required(name: str, value: Any) -> bool:
    """Required metadata at its usual value, which reprs and tables leave out."""
    return (name in ("hijax", "ref") and value is False) or (name == "eager_sharding" and value is True)


def _value_of(x: Any) -> Any:
    return x.get_value() if isinstance(x, Variable) else x


def _binary(op: Callable[[Any, Any], Any]) -> tuple[Callable, Callable, Callable]:
    def forward(self: Variable, other: Any) -> Any:
        return op(self.get_value(), _value_of(other))

    def reflected(self: Variable, other: Any) -> Any:
        return op(_value_of(other), self.get_value())

    def inplace(self: Variable, other: Any) -> Variable:
        self.set_value(op(self.get_value(), _value_of(other)))
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
    setattr(Variable, f"__{_name}__", (lambda op: lambda self: op(self.get_value()))(_op))

Variable.__hash__ = object.__hash__  # __eq__ acts on values; identity hashing keeps Variables usable as keys


def build_variable(cls: type[Variable], value: Any, metadata: dict[str, Any]) -> Variable:
    """A Variable of type ``cls`` made without calling ``__init__`` (owned by the current trace)."""
    new = object.__new__(cls)
    object.__setattr__(new, "_raw_value", value)
    object.__setattr__(new, "_metadata", metadata)
    object.__setattr__(new, "_trace", current_trace())
    object.__setattr__(new, "_seen", False)
    return new


_STATIC_TRUE, _STATIC_FALSE = Static(True), Static(False)


def _static(value: Any) -> Static:
    # the required metadata is mostly booleans: share their wrappers (flatten makes many keys)
    if value is True:
        return _STATIC_TRUE
    if value is False:
        return _STATIC_FALSE
    return Static(value)


def metadata_key(metadata: dict[str, Any]) -> tuple:
    """A hashable, order-independent key for a metadata dict."""
    return tuple([(k, _static(v)) for k, v in sorted(metadata.items())])


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


class Param(Variable[A]):
    """A trainable parameter; the default target of ``nnx.grad`` and ``nnx.Optimizer``."""


class BatchStat(Variable[A]):
    """Running statistics, such as BatchNorm's mean and variance."""


class Cache(Variable[A]):
    """Cached values, such as an attention layer's key/value cache for decoding."""


class Intermediate(Variable[A]):
    """Values recorded during a call with ``Module.sow``."""


class Perturbation(Intermediate[A]):
    """Zero-valued intermediates used to take gradients with respect to activations."""


class OptState(Variable[A]):
    """Optimizer state (moments, step counters) held by ``nnx.Optimizer``."""


OptArray = OptState
OptVariable = OptState


class RngState(Variable[A]):
    """State of a random-number stream."""


class RngKey(RngState[A]):
    """The key of a random-number stream."""


class RngCount(RngState[A]):
    """How many keys a random-number stream has handed out."""


class LoRAParam(Param[A]):
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

    wrapped._nnx_wrapped = (initializer, metadata)  # seen through by nn._eager_init.init_value
    return wrapped


def set_metadata(node: Any, /, *, only: Any = Variable, **metadata: Any) -> None:
    """Set ``metadata`` on every Variable of ``node`` matching the filter ``only``, in place.

    Args:
      node: a Module, another graph node, or a pytree holding them.
      only: a filter selecting the Variables to change (default: all of them).
      **metadata: the entries to set, e.g. ``differentiable=False``.
    """
    from nnx.graph import state  # nnx.graph builds on this module

    for _, variable in state(node, only).flat_state():
        if isinstance(variable, Variable):
            variable.set_metadata(**metadata)
