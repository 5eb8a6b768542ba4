"""Pure trees: pytrees whose graph nodes are replaced by ``NodeStates`` (a GraphDef and its
States), so that a plain JAX transform can carry them, and back.

``to_tree`` splits every graph node and Variable of a pytree (one shared reference table, so
an object reached twice comes back as a reference); ``from_tree`` merges them again. With a
``ctxtag`` both take part in that update context (see ``nnx.update_context``): an outer
``to_tree``, an inner ``from_tree`` / ``to_tree`` inside the transformed function, and an outer
``from_tree`` that writes the result into the caller's own objects.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax

from nnx._contexts import MergeContext, SplitContext, merge_context, split_context
from nnx._walks import is_node, reachable


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class NodeStates:
    """A graph node as a pytree: its ``graphdef`` (static) and its ``states`` (the children).

    ``from_split`` builds one from ``nnx.split``'s result; ``from_states`` holds States alone;
    ``from_prefixes`` holds one prefix per State (for a transform's ``in_axes``-like argument).
    ``metadata`` is static data of the caller's choosing.
    """

    __slots__ = ("_graphdef", "states", "metadata")

    def __init__(self, graphdef: Any, states: tuple[Any, ...], metadata: Any = None):
        self._graphdef = graphdef
        self.states = tuple(states)
        self.metadata = metadata

    @property
    def graphdef(self) -> Any:
        """The node's GraphDef (a ValueError for one built from States or prefixes alone)."""
        if self._graphdef is None:
            raise ValueError("This NodeStates holds no GraphDef (it was built from States or prefixes).")
        return self._graphdef

    @property
    def state(self) -> Any:
        """The single State (a ValueError when there are several)."""
        if len(self.states) != 1:
            raise ValueError(f"NodeStates.state needs exactly one State, this one holds {len(self.states)}.")
        return self.states[0]

    @classmethod
    def from_split(cls, graphdef: Any, state: Any, /, *states: Any, metadata: Any = None) -> NodeStates:
        return cls(graphdef, (state, *states), metadata)

    @classmethod
    def from_states(cls, state: Any, *states: Any) -> NodeStates:
        return cls(None, (state, *states))

    @classmethod
    def from_prefixes(cls, prefixes: Any, /, *, metadata: Any = None) -> NodeStates:
        return cls(None, tuple(prefixes), metadata)

    def __repr__(self) -> str:
        return f"NodeStates(graphdef={self._graphdef!r}, states={self.states!r}, metadata={self.metadata!r})"


jax.tree_util.register_pytree_with_keys(
    NodeStates,
    lambda n: (
        tuple((jax.tree_util.GetAttrKey(f"states[{i}]"), s) for i, s in enumerate(n.states)),
        (n._graphdef, n.metadata),
    ),
    lambda aux, states: NodeStates(aux[0], tuple(states), aux[1]),
    flatten_func=lambda n: (n.states, (n._graphdef, n.metadata)),
)

SplitFn = Callable[[SplitContext, tuple, Any, Any], Any]
MergeFn = Callable[[MergeContext, tuple, Any, Any], Any]


def default_split_fn(ctx: SplitContext, path: tuple, prefix: Any, leaf: Any) -> NodeStates:
    """A graph node (or Variable) as ``NodeStates`` of its GraphDef and one State."""
    return NodeStates.from_split(*ctx.split(leaf))


def default_merge_fn(ctx: MergeContext, path: tuple, prefix: Any, leaf: NodeStates) -> Any:
    """The object ``NodeStates`` stands for, merged from its GraphDef and States."""
    return ctx.merge(leaf.graphdef, *leaf.states)


def _leaf_prefixes(prefix: Any, tree: Any, is_leaf: Callable[[Any], bool]) -> list[Any]:
    """One prefix per leaf of ``tree``: ``prefix`` is matched against ``tree``'s tuples, lists
    and dicts, and each of its other values applies to the whole subtree below it."""
    values, prefix_def = jax.tree_util.tree_flatten(prefix, is_leaf=lambda x: not isinstance(x, tuple | list | dict))
    try:
        subtrees = prefix_def.flatten_up_to(tree)
    except ValueError as e:
        raise ValueError(f"The prefix {prefix!r} is not a prefix of the tree's structure: {e}") from None
    out: list[Any] = []
    for value, sub in zip(values, subtrees, strict=True):
        out += [value] * len(jax.tree_util.tree_leaves(sub, is_leaf=is_leaf))
    return out


def _check_aliasing(tree: Any, prefixes: list[Any]) -> None:
    """A ValueError when an object reachable from several places has different prefixes
    (``prefixes``: one per leaf of ``tree``)."""
    seen: dict[int, tuple[str, Any]] = {}
    for k, here, obj in reachable(tree):
        here = here or "the tree"
        first = seen.setdefault(id(obj), (here, prefixes[k]))
        if first[1] != prefixes[k]:
            raise ValueError(
                "Inconsistent aliasing detected. The following nodes have different prefixes: "
                f"the {type(obj).__name__} at\n  {first[0]}: {first[1]!r}\n  {here}: {prefixes[k]!r}\n"
                "Give a shared object the same prefix wherever it is reached."
            )


def to_tree(
    tree: Any, /, *, prefix: Any = MISSING, split_fn: SplitFn = default_split_fn,
    map_non_graph_nodes: bool = False, ctxtag: Hashable | None = None, check_aliasing: bool = True,
) -> Any:
    """``tree`` with each graph node and Variable replaced by ``split_fn(ctx, path, prefix,
    node)`` (``NodeStates`` by default), all split in one context.

    Args:
      tree: any pytree, graph nodes and Variables as its leaves.
      prefix: a prefix of ``tree`` (like ``vmap``'s ``in_axes``) whose value for each leaf is
        passed to ``split_fn``; an object reached from two places with different prefixes
        raises "Inconsistent aliasing detected" (unless ``check_aliasing=False``).
      split_fn: builds the pure form of a node.
      map_non_graph_nodes: also pass the other leaves through ``split_fn``.
      ctxtag: take part in the update context of that name (the outer or the inner split).
    """
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_node)
    if prefix is MISSING or prefix is None:
        prefixes = [prefix] * len(paths_leaves)
    else:
        prefixes = _leaf_prefixes(prefix, tree, is_node)
        if check_aliasing:
            _check_aliasing(tree, prefixes)
    with split_context(ctxtag) as ctx:
        out = [
            split_fn(ctx, path, s, x) if map_non_graph_nodes or is_node(x) else x
            for (path, x), s in zip(paths_leaves, prefixes, strict=True)
        ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _is_node_states(x: Any) -> bool:
    return isinstance(x, NodeStates)


def from_tree(
    tree: Any, /, *, prefix: Any = MISSING, merge_fn: MergeFn = default_merge_fn,
    is_node_leaf: Callable[[Any], bool] = _is_node_states, is_leaf: Callable[[Any], bool] = _is_node_states,
    map_non_graph_nodes: bool = False, is_inner: bool | None = None, ctxtag: Hashable | None = None,
) -> Any:
    """The inverse of ``to_tree``: each leaf for which ``is_node_leaf`` holds (``NodeStates``
    by default) becomes ``merge_fn(ctx, path, prefix, leaf)``, all merged in one context.

    Args:
      tree: a pure tree.
      prefix: a prefix of ``tree`` whose value for each leaf is passed to ``merge_fn``.
      merge_fn: rebuilds a node from its pure form.
      is_node_leaf: which leaves are pure nodes; ``is_leaf``: where flattening stops.
      map_non_graph_nodes: also pass the other leaves through ``merge_fn``.
      is_inner, ctxtag: the inner (True) or outer (False) merge of the update context
        ``ctxtag``; the outer one updates the caller's objects in place.
    """
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    if prefix is MISSING or prefix is None:
        prefixes = [prefix] * len(paths_leaves)
    else:
        prefixes = _leaf_prefixes(prefix, tree, is_leaf)
    with merge_context(ctxtag, is_inner) as ctx:
        out = [
            merge_fn(ctx, path, s, x) if map_non_graph_nodes or is_node_leaf(x) else x
            for (path, x), s in zip(paths_leaves, prefixes, strict=True)
        ]
    return jax.tree_util.tree_unflatten(treedef, out)


def clear_non_graph_nodes(tree: Any) -> Any:
    """``tree`` with every leaf that is not a graph node or Variable replaced by None."""
    return jax.tree.map(lambda x: x if is_node(x) else None, tree, is_leaf=is_node)
