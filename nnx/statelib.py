"""State: a nested mapping from attribute names and keys to Variables (or raw arrays)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import jax

from nnx import _structure as structure
from nnx import filterlib
from nnx._display import ReprParts, object_repr, treescope_repr
from nnx._typing import Path, key_order, path_order, path_str
from nnx.variablelib import Variable


def is_state_leaf(x: Any) -> bool:
    """Whether ``x`` is a State leaf (anything that is not a nested mapping)."""
    return not isinstance(x, Mapping)


class State(MutableMapping):
    """A nested mapping whose leaves are Variables or arrays; a registered JAX pytree.

    Index it by key (``state['linear']['kernel']``) or attribute (``state.linear.kernel``).
    ``jax.tree.map`` over a State maps its arrays and keeps its structure and Variable types.
    A State held by a graph node (an optimizer's state) is tracked like ``nnx.Dict``: once a
    flatten has seen it, adding or removing keys bumps the structure version.
    """

    __slots__ = ("_mapping", "_seen")

    def __init__(self, mapping: Mapping[Any, Any] | None = None, /):
        object.__setattr__(self, "_mapping", {})
        object.__setattr__(self, "_seen", False)
        if mapping is not None:
            for k, v in mapping.items():
                self[k] = v

    def _graph_mark_seen(self) -> None:
        object.__setattr__(self, "_seen", True)

    # -- mapping protocol --------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        return self._mapping[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, Mapping) and not isinstance(value, State):
            value = State(value)
        if self._seen:
            structure.bump()
        self._mapping[key] = value

    def __delitem__(self, key: Any) -> None:
        if self._seen:
            structure.bump()
        del self._mapping[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)

    def __contains__(self, key: object) -> bool:
        return key in self._mapping

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_mapping", "_seen"):  # unset: not initialised yet
            raise AttributeError(name)
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(
                f"State has no key {name!r}; keys are {sorted(map(str, self._mapping))}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        # Rebuild through __init__: the default slot restore would go through __setattr__,
        # which stores keys in the mapping.
        return (State, (self._mapping,))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        a, b = self.flat_state(), State.flatten_mapping(other)
        if [p for p, _ in a] != sorted(b, key=lambda p: path_order(p)):
            return False
        for path, leaf in a:
            x, y = leaf, b[path]
            if type(x) is not type(y):
                return False
            if isinstance(x, Variable):
                x, y = x._raw_value, y._raw_value
            if x is not y and not bool(jax.numpy.array_equal(x, y)):
                return False
        return True

    # -- flat views --------------------------------------------------------------------
    @staticmethod
    def flatten_mapping(mapping: Mapping, prefix: Path = ()) -> dict[Path, Any]:
        """A dict from paths to leaves for any nested mapping."""
        flat: dict[Path, Any] = {}
        for k, v in mapping.items():
            if isinstance(v, Mapping):
                flat.update(State.flatten_mapping(v, (*prefix, k)))
            else:
                flat[(*prefix, k)] = v
        return flat

    def flat_state(self) -> list[tuple[Path, Any]]:
        """``(path, leaf)`` pairs in sorted path order."""
        flat = State.flatten_mapping(self)
        return sorted(flat.items(), key=lambda kv: path_order(kv[0]))

    def to_flat_state(self) -> FlatState:
        """The ``(path, leaf)`` pairs as a ``FlatState``, in sorted path order."""
        return FlatState(self.flat_state())

    @classmethod
    def from_flat_path(cls, pairs: Any) -> State:
        """Build a State from ``(path, leaf)`` pairs (or a dict of them)."""
        if isinstance(pairs, Mapping):
            pairs = pairs.items()
        root: dict[Any, Any] = {}
        for path, leaf in pairs:
            if not path:
                raise ValueError("A State leaf needs a non-empty path")
            node = root
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = leaf
        return cls(root)

    @classmethod
    def from_flat_state(cls, pairs: Any) -> State:
        """Build a State from a ``FlatState`` or ``(path, leaf)`` pairs."""
        return cls.from_flat_path(pairs)

    # -- filtering and combining -------------------------------------------------------
    def filter(self, *filters: Any) -> Any:
        """The leaves matching each filter, as one State per filter (unmatched dropped)."""
        states = partition_pairs(self.flat_state(), filters or (...,), exhaustive=False)
        return states[0] if len(states) == 1 else tuple(states)

    def split(self, *filters: Any) -> Any:
        """Partition into one State per filter; filters must match every leaf."""
        states = partition_pairs(self.flat_state(), filters or (...,), exhaustive=True)
        return states[0] if len(states) == 1 else tuple(states)

    @staticmethod
    def merge(state: Mapping, /, *states: Mapping) -> State:
        """One State holding the leaves of all given States (later ones win on conflicts)."""
        flat: dict[Path, Any] = {}
        for s in (state, *states):
            flat.update(State.flatten_mapping(s))
        return State.from_flat_path(flat)

    def __or__(self, other: Mapping) -> State:
        return State.merge(self, other)

    def __sub__(self, other: Mapping) -> State:
        drop = set(State.flatten_mapping(other))
        return State.from_flat_path([(p, v) for p, v in self.flat_state() if p not in drop])

    # -- pure dicts --------------------------------------------------------------------
    def to_pure_dict(self) -> dict[Any, Any]:
        """Nested plain dicts of raw values (Variables unwrapped), e.g. for checkpoints."""
        return {
            k: v.to_pure_dict() if isinstance(v, State) else _raw(v)
            for k, v in self._mapping.items()
        }

    def replace_by_pure_dict(self, pure_dict: Mapping, replace_fn: Any = None) -> None:
        """Write raw values from a pure nested dict into this State's leaves, in place.

        Keys may be strings where the State has integer keys (as after a JSON round trip).
        A key the State lacks raises ``KeyError`` naming the path.
        """
        replace_fn = replace_fn or _replace_leaf
        for path, value in State.flatten_mapping(pure_dict).items():
            node: Any = self
            resolved = []
            for key in path[:-1]:
                key = _resolve_key(node, key, path)
                resolved.append(key)
                node = node[key]
            last = _resolve_key(node, path[-1], path)
            node[last] = replace_fn(node[last], value)

    def _repr_parts(self) -> ReprParts:
        return ReprParts("State", list(self._mapping.items()), mapping=True)

    __repr__ = object_repr
    __treescope_repr__ = treescope_repr


class FlatState(Sequence):
    """A State as a sequence of ``(path, leaf)`` pairs in sorted path order, with ``paths`` and
    ``leaves`` views; ``to_nested_state()`` builds the State again."""

    __slots__ = ("_paths", "_leaves")

    def __init__(self, pairs: Iterable[tuple[Path, Any]], /):
        pairs = sorted(pairs, key=lambda kv: path_order(kv[0]))
        self._paths = tuple(p for p, _ in pairs)
        self._leaves = [v for _, v in pairs]

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._paths

    @property
    def leaves(self) -> list[Any]:
        return self._leaves

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return FlatState(zip(self._paths[index], self._leaves[index], strict=True))
        return self._paths[index], self._leaves[index]

    def __len__(self) -> int:
        return len(self._leaves)

    def __iter__(self) -> Iterator[tuple[Path, Any]]:
        return iter(zip(self._paths, self._leaves, strict=True))

    def __repr__(self) -> str:
        return f"FlatState({list(self)!r})"

    def to_nested_state(self) -> State:
        return State.from_flat_path(list(self))

    def filter(self, *filters: Any) -> Any:
        """One FlatState per filter (unmatched pairs dropped)."""
        states = _partition_flat(list(self), filters or (...,), exhaustive=False)
        return states[0] if len(states) == 1 else tuple(states)

    def split(self, *filters: Any) -> Any:
        """One FlatState per filter; the filters must match every pair."""
        states = _partition_flat(list(self), filters or (...,), exhaustive=True)
        return states[0] if len(states) == 1 else tuple(states)


def to_flat_state(state: Mapping) -> FlatState:
    """The ``(path, leaf)`` pairs of a State (or nested mapping), in sorted path order."""
    return FlatState(State.flatten_mapping(state).items())


def from_flat_state(pairs: Any) -> State:
    """The State of a ``FlatState`` (or ``(path, leaf)`` pairs, or a dict of them)."""
    return State.from_flat_path(pairs)


def restore_int_paths(pure_dict: Mapping) -> dict[Any, Any]:
    """A copy of a nested dict whose digit string keys (``'0'``, after a JSON or orbax round
    trip) are integers again, as nnx paths have them."""
    return {
        int(k) if isinstance(k, str) and k.isdigit() else k:
        restore_int_paths(v) if isinstance(v, Mapping) else v
        for k, v in pure_dict.items()
    }


def map_state(f: Any, state: Mapping) -> State:
    """A new State with ``f(path, leaf)`` applied to every leaf."""
    return State.from_flat_path([(p, f(p, v)) for p, v in to_flat_state(state)])


def _partition_flat(
    pairs: list[tuple[Path, Any]], filters: tuple[Any, ...], *, exhaustive: bool
) -> list[FlatState]:
    buckets = _buckets(pairs, filters, exhaustive)
    return [FlatState(b) for b in buckets]


def partition_pairs(
    pairs: list[tuple[Path, Any]], filters: tuple[Any, ...], *, exhaustive: bool
) -> list[Any]:
    """One State per filter from ``(path, leaf)`` pairs; each leaf goes to the first filter that
    matches it. With ``exhaustive``, a leaf no filter matches raises, naming its path.

    A standalone Variable (a single leaf at path ``()``) is returned as is, not in a State.
    """
    buckets = _buckets(pairs, filters, exhaustive)
    return [b[0][1] if b and b[0][0] == () else State.from_flat_path(b) for b in buckets]


def _buckets(
    pairs: list[tuple[Path, Any]], filters: tuple[Any, ...], exhaustive: bool
) -> list[list[tuple[Path, Any]]]:
    predicates = filterlib.filters_to_predicates(filters)
    buckets: list[list[tuple[Path, Any]]] = [[] for _ in predicates]
    rest = []
    for path, leaf in pairs:
        for bucket, pred in zip(buckets, predicates, strict=True):
            if pred(path, leaf):
                bucket.append((path, leaf))
                break
        else:
            rest.append((path, leaf))
    if exhaustive and rest:
        shown = "\n".join(f"  {path_str(p)}: {type(v).__name__}" for p, v in rest[:10])
        more = f"\n  ... and {len(rest) - 10} more" if len(rest) > 10 else ""
        raise ValueError(
            f"Non-exhaustive filters, got a non-empty remainder: {len(rest)} Variable(s) "
            f"matched none of {filters!r}:\n{shown}{more}\nAdd a filter for them, or `...` as "
            "the last filter to take the rest."
        )
    return buckets


def _raw(v: Any) -> Any:
    return v._raw_value if isinstance(v, Variable) else v


def _replace_leaf(leaf: Any, value: Any) -> Any:
    if isinstance(leaf, Variable):
        return leaf.copy(value)
    return value


def _resolve_key(node: Mapping, key: Any, path: Path) -> Any:
    if key in node:
        return key
    if isinstance(key, str) and key.lstrip("-").isdigit() and int(key) in node:
        return int(key)
    raise KeyError(
        f"replace_by_pure_dict: '{path_str(path)}' does not exist in the State "
        f"(at this level it has {sorted(map(str, node))})."
    )


def to_pure_dict(state: State) -> dict[Any, Any]:
    """Nested plain dicts of the raw values in ``state``."""
    return state.to_pure_dict()


def replace_by_pure_dict(state: State, pure_dict: Mapping) -> None:
    """Write a pure nested dict of raw values into ``state``'s leaves in place."""
    state.replace_by_pure_dict(pure_dict)


def filter_state(state: State, *filters: Any) -> Any:
    return state.filter(*filters)


def split_state(state: State, *filters: Any) -> Any:
    return state.split(*filters)


def merge_state(state: Mapping, *states: Mapping) -> State:
    return State.merge(state, *states)


def _flatten_with_keys(state: State):
    keys = sorted(state._mapping, key=key_order)
    return [(jax.tree_util.DictKey(k), state._mapping[k]) for k in keys], tuple(keys)


def _flatten(state: State):
    keys = sorted(state._mapping, key=key_order)
    return [state._mapping[k] for k in keys], tuple(keys)


def _unflatten(keys: tuple, children: Any) -> State:
    s = object.__new__(State)
    object.__setattr__(s, "_seen", False)
    object.__setattr__(s, "_mapping", dict(zip(keys, children, strict=True)))
    return s


jax.tree_util.register_pytree_with_keys(State, _flatten_with_keys, _unflatten, flatten_func=_flatten)
