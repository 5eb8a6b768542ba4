"""A State that keeps its GraphDef (``nnx.unpack``), calling methods on a ``(GraphDef, State)``
pair (``nnx.call``, ``GraphDef.apply``), and Variables to plain values (``nnx.as_pure``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar

import jax

from nnx import statelib
from nnx._graphdef import GraphDef
from nnx._modes import set_graph_mode
from nnx._typing import path_str
from nnx.statelib import State
from nnx.variablelib import Variable

A = TypeVar("A")


class GraphState(MutableMapping):
    """A State together with the GraphDef it belongs to, so ``nnx.merge(state)`` needs nothing
    else; it reads and writes like its State and is a JAX pytree with the State's leaves."""

    __slots__ = ("_graphdef", "_state")

    def __init__(self, graphdef: GraphDef, state: State):
        if not isinstance(state, State):
            raise ValueError(f"GraphState expects a State, got {type(state).__name__}")
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_state", state)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._state, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._state, name, value)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._state[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __repr__(self) -> str:
        return f"GraphState(graphdef={self._graphdef!r}, state={self._state!r})"


def _flatten_with_keys(gs: GraphState):
    children, keys = statelib._flatten_with_keys(gs._state)
    return children, (gs._graphdef, keys)


def _flatten(gs: GraphState):
    children, keys = statelib._flatten(gs._state)
    return children, (gs._graphdef, keys)


def _unflatten(aux: tuple, children: Any) -> GraphState:
    graphdef, keys = aux
    return GraphState(graphdef, statelib._unflatten(keys, children))


jax.tree_util.register_pytree_with_keys(GraphState, _flatten_with_keys, _unflatten, _flatten)


def graphdef_of_states(states: tuple[Any, ...]) -> tuple[GraphDef, tuple[State, ...]]:
    """The common GraphDef of GraphStates and their States; raises for anything else."""
    graphdef = states[0]._graphdef
    for s in states:
        if not isinstance(s, GraphState):
            raise ValueError(
                f"Expected GraphState objects after a GraphState, got {type(s).__name__}; pass "
                "either a GraphDef and States or only GraphStates."
            )
        if s._graphdef != graphdef:
            raise ValueError("GraphDef must be the same for all GraphState objects given to merge")
    return graphdef, tuple(s._state for s in states)


def unpack(node: Any, /, *filters: Any, graph: bool | None = None) -> Any:
    """Like ``nnx.split`` but each State carries the GraphDef: one GraphState for zero or one
    filter, a tuple of them for more; ``nnx.merge(*graph_states)`` rebuilds the node.

    Args:
      node: the graph to split.
      *filters: filters partitioning the Variables (as for ``split``).
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    from nnx.graph import split

    graphdef, *states = split(node, *filters, graph=graph)
    graph_states = tuple(GraphState(graphdef, s) for s in states)
    return graph_states[0] if len(graph_states) == 1 else graph_states


class CallProxy:
    """Records attribute and item accesses (``proxy.layers[0].method``) and, when called, runs
    ``run(node -> target, *args, **kwargs)``."""

    __slots__ = ("_run", "_accessors")

    def __init__(self, run: Callable[..., Any], accessors: tuple = ()):
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_accessors", accessors)

    def __getattr__(self, name: str) -> CallProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return CallProxy(self._run, (*self._accessors, ("attr", name)))

    def __getitem__(self, key: Any) -> CallProxy:
        return CallProxy(self._run, (*self._accessors, ("item", key)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        accessors = self._accessors

        def target(node: Any) -> Any:
            for kind, key in accessors:
                node = getattr(node, key) if kind == "attr" else node[key]
            return node

        return self._run(target, *args, **kwargs)


def call(graphdef_state: tuple[GraphDef, Any], /) -> CallProxy:
    """Call a method of the node a ``(GraphDef, State)`` pair stands for, in pure code:
    ``out, (graphdef, state) = nnx.call((graphdef, state)).method(*args)`` merges, calls and
    splits again, returning the output and the new pair.

    Args:
      graphdef_state: the pair returned by ``nnx.split`` (one State).
    """
    from nnx.graph import merge, split

    def run(target: Callable[[Any], Any], *args: Any, **kwargs: Any) -> Any:
        node = merge(*graphdef_state)
        out = target(node)(*args, **kwargs)
        return out, split(node)

    return CallProxy(run)


def apply(graphdef: GraphDef, states: tuple[Any, ...], graph: bool | None = None) -> CallProxy:
    """``graphdef.apply(state)``: like ``call`` for a GraphDef and its States."""
    from nnx.graph import merge, split

    def run(target: Callable[[Any], Any], *args: Any, **kwargs: Any) -> Any:
        node = merge(graphdef, *states)
        out = target(node)(*args, **kwargs)
        use_graph = set_graph_mode.current_value() if graph is None else graph
        return out, split(node, graph=use_graph)

    return CallProxy(run)


def as_pure(tree: A) -> A:
    """``tree`` with every Variable replaced by its raw value (metadata dropped), e.g. to
    export or serialize a State."""
    return jax.tree.map(
        lambda x: as_pure(x.get_raw_value()) if isinstance(x, Variable) else x,
        tree,
        is_leaf=lambda x: isinstance(x, Variable),
    )


def with_vars(
    node: A, /, *, only: Any = ..., allow_duplicates: bool = False, **metadata: Any
) -> A:
    """A copy of ``node`` whose Variables matching ``only`` are copies with ``metadata`` set
    (e.g. ``hijax=False``); the others are shared. Shared Variables among those raise unless
    ``allow_duplicates``.

    Args:
      node: the graph to copy.
      only: a filter on the Variables to copy.
      allow_duplicates: allow a matching Variable reachable at several paths.
      **metadata: the metadata of the copies.
    """
    from nnx import filterlib
    from nnx._walks import find_duplicates, map

    metadata = {k: v for k, v in metadata.items() if v is not None}

    def differs(path: tuple, x: Any) -> bool:
        return isinstance(x, Variable) and any(
            x.get_metadata(k, None) != v for k, v in metadata.items()
        )

    selected = filterlib.All(differs, only)
    if not allow_duplicates:
        duplicates = find_duplicates(node, only=selected)
        if duplicates:
            shown = "\n".join("  " + ", ".join(path_str(p) for p in paths) for paths in duplicates)
            raise ValueError(f"with_vars: found duplicate Variables at paths:\n{shown}")
    return map(
        lambda p, x: x.copy(**metadata) if selected(p, x) else x, node, recreate_variables=False
    )
