"""The static description of an object graph: typed definitions, ``GraphDef``, flatten and unflatten.

``flatten`` walks a graph depth-first and returns a ``GraphDef`` (what the graph is made of) and
its leaves (Variables and raw arrays, in order). Each entry of a GraphDef is one of:

- ``NodeDef``: a graph node (Module, Rngs, ``nnx.List``/``nnx.Dict``...) and its children;
- ``VariableDef``: a Variable (its type and metadata; the value is the next leaf);
- ``RefDef``: a second reference to a node or Variable seen earlier (sharing, cycles);
- ``PytreeDef``: a JAX pytree container (tuple, namedtuple, dataclass...) and its children;
- ``LEAF``: a raw array (the next leaf);
- ``Static``: a static value kept in the GraphDef (ints, strings, functions...).

``DefVisitor`` is the one way to read these entries: ``Unflattener``, the leaf count and the repr
are visitors. Entries are named tuples, so a GraphDef hashes and compares at C speed.
"""

from __future__ import annotations

from types import GenericAlias
from typing import Any, NamedTuple

import jax

from nnx._display import leaf_repr
from nnx._node import GraphNode
from nnx._statics import Static
from nnx._typing import ARRAY_TYPES, Path, key_from_path_entry
from nnx.variablelib import Variable, build_variable, metadata_key


class NodeDef(NamedTuple):
    """A graph node: its type, its index in the reference table and ``(key, def)`` children."""

    type: type
    index: int
    children: tuple[tuple[Any, Any], ...]


class VariableDef(NamedTuple):
    """A Variable: its type, its index in the reference table and its metadata key."""

    type: type
    index: int
    metadata: tuple


class RefDef(NamedTuple):
    """A reference to the node or Variable with this index, defined earlier in the walk."""

    index: int


class PytreeDef(NamedTuple):
    """A pytree container that is not a graph node: its treedef and one def per child."""

    treedef: Any
    children: tuple[Any, ...]


class LeafDef:
    """A raw (non-Variable) array leaf; ``LEAF`` is the only instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Leaf"

    def __reduce__(self) -> str:
        return "LEAF"


LEAF = LeafDef()


class DefVisitor:
    """Reads GraphDef entries: ``visit(d)`` calls ``node``, ``variable``, ``ref``, ``pytree``,
    ``leaf`` or ``static`` by the kind of ``d``; subclasses implement those they meet."""

    __slots__ = ()

    def visit(self, d: Any) -> Any:
        return getattr(self, _METHOD[type(d)])(d)

    def node(self, d: NodeDef) -> Any:
        raise NotImplementedError

    def variable(self, d: VariableDef) -> Any:
        raise NotImplementedError

    def ref(self, d: RefDef) -> Any:
        raise NotImplementedError

    def pytree(self, d: PytreeDef) -> Any:
        raise NotImplementedError

    def leaf(self, d: LeafDef) -> Any:
        raise NotImplementedError

    def static(self, d: Static) -> Any:
        raise NotImplementedError


_METHOD: dict[type, str] = {
    NodeDef: "node", VariableDef: "variable", RefDef: "ref", PytreeDef: "pytree",
    LeafDef: "leaf", Static: "static",
}


class _LeafCounter(DefVisitor):
    __slots__ = ()

    def node(self, d: NodeDef) -> int:
        return sum(self.visit(c) for _, c in d.children)

    def variable(self, d: VariableDef) -> int:
        return 1

    def ref(self, d: RefDef) -> int:
        return 0

    def pytree(self, d: PytreeDef) -> int:
        return sum(self.visit(c) for c in d.children)

    def leaf(self, d: LeafDef) -> int:
        return 1

    def static(self, d: Static) -> int:
        return 0


_COUNTER = _LeafCounter()


def child_defs(d: Any) -> list[tuple[Any, Any]]:
    """The ``(key, definition)`` children of a NodeDef or PytreeDef (none for other entries),
    with the keys that the paths of their leaves use."""
    if isinstance(d, NodeDef):
        return list(d.children)
    if isinstance(d, PytreeDef):
        keys = [k for k, _ in pytree_children(d.treedef.unflatten(list(d.children)))[0]]
        return list(zip(keys, d.children, strict=True))
    return []


def count_leaves(d: Any) -> int:
    """How many leaves (Variables and raw arrays) the entry ``d`` defines."""
    return _COUNTER.visit(d)


class _LeafSources(DefVisitor):
    __slots__ = ()

    def node(self, d: NodeDef) -> list:
        return [i for _, c in d.children for i in self.visit(c)]

    def variable(self, d: VariableDef) -> list:
        return [d.index]

    def ref(self, d: RefDef) -> list:
        return []

    def pytree(self, d: PytreeDef) -> list:
        return [i for c in d.children for i in self.visit(c)]

    def leaf(self, d: LeafDef) -> list:
        return [None]

    def static(self, d: Static) -> list:
        return []


_SOURCES = _LeafSources()


def leaf_sources(d: Any) -> list[int | None]:
    """Per leaf that ``d`` defines, in order: the object index of its Variable, or None for a
    raw array."""
    return _SOURCES.visit(d)


class _Renderer(DefVisitor):
    __slots__ = ("depth",)
    _INDENT = "  "

    def __init__(self):
        self.depth = 0

    def _nested(self, head: str, lines: list[str]) -> str:
        pad = self._INDENT * self.depth
        return f"{head},\n" + ",\n".join(lines) + f"\n{pad})"

    def _children(self, items: list[tuple[str, Any]]) -> list[str]:
        self.depth += 1
        pad = self._INDENT * self.depth
        lines = [f"{pad}{prefix}{self.visit(c)}" for prefix, c in items]
        self.depth -= 1
        return lines

    def node(self, d: NodeDef) -> str:
        head = f"{d.type.__name__}Def(index={d.index}"
        if not d.children:
            return head + ")"
        return self._nested(head, self._children([(f"{k}=", c) for k, c in d.children]))

    def variable(self, d: VariableDef) -> str:
        return f"{d.type.__name__}Def(index={d.index})"

    def ref(self, d: RefDef) -> str:
        return f"Ref({d.index})"

    def pytree(self, d: PytreeDef) -> str:
        return self._nested(f"Pytree({d.treedef}", self._children([("", c) for c in d.children]))

    def leaf(self, d: LeafDef) -> str:
        return "Leaf"

    def static(self, d: Static) -> str:
        return leaf_repr(d.value)


class GraphDef:
    """The static part of a graph: node types, static attributes, Variable types and metadata,
    and where shared references point. Hashable and comparable, so it can key a jit cache.
    """

    __slots__ = ("root", "paths", "_hash")

    def __init__(self, root: Any, paths: tuple[Path, ...]):
        self.root = root
        self.paths = paths  # derived from root: the path of each leaf, in leaf order
        self._hash = hash(root)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, GraphDef) and self._hash == other._hash and self.root == other.root
        )

    @property
    def num_leaves(self) -> int:
        return len(self.paths)

    # ``nnx.GraphDef[Model]`` in annotations (``def f(graphdef: nnx.GraphDef[nnx.Dict])``)
    __class_getitem__ = classmethod(GenericAlias)

    def merge(self, *states: Any) -> Any:
        """Build a new graph from this GraphDef and States; see ``nnx.merge``."""
        from nnx.graph import merge  # graph builds on this module

        return merge(self, *states)

    def apply(self, state: Any, *states: Any, graph: bool | None = None) -> Any:
        """``graphdef.apply(state).method(*args)`` merges, calls ``method`` and splits again,
        returning ``(output, (graphdef, state))``; see ``nnx.call``."""
        from nnx._graph_state import apply  # builds on this module

        return apply(self, (state, *states), graph)

    def __repr__(self) -> str:
        return "GraphDef(" + _Renderer().visit(self.root) + ")"


# A GraphDef is a pytree without leaves (it is its own aux data), so it can be passed to
# jax.jit and other JAX transforms as an ordinary argument, as in ``forward(graphdef, state)``.
jax.tree_util.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


# -- flatten ---------------------------------------------------------------------------

_STATIC_FAST = (int, float, complex, str, bool, bytes, type(None), type)
_STATIC_EXACT = frozenset(_STATIC_FAST)


def pytree_children(value: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """One level of a pytree: ``([(key, child), ...], treedef)``; a leaf gives ``([], None)``."""
    entries, treedef = jax.tree_util.tree_flatten_with_path(
        value, is_leaf=lambda x: x is not value
    )
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return [], None
    return [(key_from_path_entry(e[0]), child) for e, child in entries], treedef


def _is_immutable_container(value: Any) -> bool:
    """Tuples and namedtuples cannot change in place: a cache may look through them."""
    return type(value) is tuple or (isinstance(value, tuple) and hasattr(type(value), "_fields"))


class Flattener:
    """One depth-first walk over one or more roots that share a reference table.

    Besides the definitions it records, per leaf, its path, its owner (the Variable, or
    ``(node, key)`` for a raw array held directly by a graph node, or None for a raw array
    nested in a container) and its holder (the Variable, or the nearest enclosing graph node);
    per object, its path. ``cacheable`` turns False when the walk crossed something whose
    changes the structure version does not see: a mutable container that is neither a graph
    node nor tracked (a dict inside a tuple, an ``OrderedDict``, a dataclass, a custom pytree;
    a ``State`` is tracked) or a raw array nested in a container; a cache must then flatten
    again on every call.

    With ``tree=True`` (tree mode) nothing is shared: a Variable reached twice raises (naming
    both paths), a graph node reached twice is walked again (a copy on the other side), and a
    cycle raises. ``label`` prefixes paths in those messages (e.g. ``args[0]``).
    """

    __slots__ = (
        "index", "objects", "object_paths", "leaves", "paths", "owners", "holders", "cacheable",
        "tree", "label", "_labels", "_walking",
    )

    def __init__(self, tree: bool = False):
        self.tree = tree
        self.label = ""
        self._labels: list[str] = []
        self._walking: set[int] = set()
        self.index: dict[int, int] = {}
        self.objects: list[Any] = []  # index -> object; also keeps ids valid
        self.object_paths: list[Path] = []
        self.leaves: list[Any] = []
        self.paths: list[Path] = []
        self.owners: list[Any] = []
        self.holders: list[Any] = []
        self.cacheable = True

    def _register(self, obj: Any, path: Path) -> int:
        i = len(self.objects)
        self.index[id(obj)] = i
        self.objects.append(obj)
        self.object_paths.append(path)
        self._labels.append(self.label)
        return i

    def where(self, i: int) -> str:
        """Where object ``i`` was found, for messages: ``args[0]/layers/0``."""
        parts = [self._labels[i], *map(str, self.object_paths[i])]
        return "/".join(p for p in parts if p) or "<root>"

    def _duplicate(self, value: Any, i: int, path: Path) -> ValueError:
        now = "/".join(p for p in [self.label, *map(str, path)] if p) or "<root>"
        return ValueError(
            f"Duplicate {type(value).__name__} found at paths:\n  - {self.where(i)}\n  - {now}\n"
            "Tree mode (graph=False) and graph_updates=False do not support Variable aliasing "
            "(the same Variable twice among the arguments or outputs, or an input Variable "
            "returned). Pass distinct Variables (nnx.clone), or use graph mode with graph "
            "updates (graph=True, graph_updates=True), which keeps the sharing."
        )

    def _add_leaf(self, leaf: Any, path: Path, owner: Any, holder: Any) -> None:
        self.leaves.append(leaf)
        self.paths.append(path)
        self.owners.append(owner)
        self.holders.append(holder)
        if owner is None:
            self.cacheable = False

    def _node_children(self, node: GraphNode, path: Path) -> tuple:
        children = []
        for key, child in node._graph_items():
            forced = node._graph_forced(key)
            if (
                forced == "static" or (forced is None and type(child) in _STATIC_EXACT)
                or (forced == "reference" and self.tree)  # see Optimizer._graph_forced
            ):
                children.append((key, Static(child)))  # the common case, without a call
            else:
                children.append((key, self.flatten(
                    child, (*path, key), forced == "data", (node, key), node
                )))
        return tuple(children)

    def flatten(
        self, value: Any, path: Path = (), force_data: bool = False, owner: Any = None,
        holder: Any = None,
    ) -> Any:
        """Return the definition of ``value`` and append its leaves; see module docstring.

        ``owner`` is ``(node, key)`` when ``value`` is held directly by a graph node;
        ``holder`` is the nearest graph node above ``value``.
        """
        if isinstance(value, Variable):
            i = self.index.get(id(value))
            if i is not None:
                if self.tree:
                    raise self._duplicate(value, i, path)
                return RefDef(i)
            i = self._register(value, path)
            object.__setattr__(value, "_seen", True)
            self.leaves.append(value)
            self.paths.append(path)
            self.owners.append(value)
            self.holders.append(value)
            return VariableDef(type(value), i, metadata_key(value._metadata))
        if isinstance(value, GraphNode):
            i = self.index.get(id(value))
            if i is not None:
                if not self.tree:
                    return RefDef(i)
                if id(value) in self._walking:
                    raise ValueError(
                        f"{type(value).__name__} at '{self.where(i)}' contains itself: a cycle "
                        "cannot be a pytree; use graph mode (graph=True)."
                    )
            i = self._register(value, path)
            value._graph_mark_seen()
            if self.tree:
                self._walking.add(id(value))
                try:
                    return NodeDef(type(value), i, self._node_children(value, path))
                finally:
                    self._walking.discard(id(value))
            return NodeDef(type(value), i, self._node_children(value, path))
        if isinstance(value, ARRAY_TYPES):
            self._add_leaf(value, path, owner, holder)
            return LEAF
        if isinstance(value, _STATIC_FAST) and not force_data:
            return Static(value)
        if not force_data and callable(value) and not isinstance(value, list | tuple | dict):
            return Static(value)
        items, treedef = pytree_children(value)
        if treedef is None:  # not a container
            if force_data:
                self._add_leaf(value, path, owner, holder)
                return LEAF
            return Static(value)
        if not _is_immutable_container(value):
            mark_seen = getattr(value, "_graph_mark_seen", None)  # a tracked container (State)
            if mark_seen is None:
                self.cacheable = False
            else:
                mark_seen()
        start = len(self.leaves)
        children = tuple(
            self.flatten(child, (*path, key), force_data, None, holder) for key, child in items
        )
        if len(self.leaves) == start and all(type(c) is Static for c in children):
            return Static(value)
        return PytreeDef(treedef, children)


def flatten(node: Any) -> tuple[GraphDef, list[Any]]:
    """Flatten ``node`` into a GraphDef and its leaves (Variables and raw arrays), in order."""
    f = Flattener()
    root = f.flatten(node)
    return GraphDef(root, tuple(f.paths)), f.leaves


# -- unflatten -------------------------------------------------------------------------


class Unflattener(DefVisitor):
    """Rebuild objects from definitions and leaves; ``existing`` maps indices to objects to
    update in place instead of creating new ones."""

    __slots__ = ("leaves", "pos", "objects", "existing")

    def __init__(self, leaves: list[Any], existing: dict[int, Any] | None = None):
        self.leaves = leaves
        self.pos = 0
        self.objects: dict[int, Any] = {}
        self.existing = existing

    def _next_leaf(self) -> Any:
        leaf = self.leaves[self.pos]
        self.pos += 1
        return leaf

    unflatten = DefVisitor.visit

    def skip(self, d: Any) -> None:
        """Step over the leaves of ``d`` without building it."""
        self.pos += count_leaves(d)

    def static(self, d: Static) -> Any:
        return d.value

    def leaf(self, d: LeafDef) -> Any:
        leaf = self._next_leaf()
        return leaf._raw_value if isinstance(leaf, Variable) else leaf

    def ref(self, d: RefDef) -> Any:
        return self.objects[d.index]

    def variable(self, d: VariableDef) -> Variable:
        leaf = self._next_leaf()
        target = None if self.existing is None else self.existing.get(d.index)
        if target is not None:
            if isinstance(leaf, Variable):
                target.update_from(leaf)
            else:
                object.__setattr__(target, "_raw_value", leaf)
                if metadata_key(target._metadata) != d.metadata:
                    object.__setattr__(target, "_metadata", {k: s.value for k, s in d.metadata})
            var = target
        elif isinstance(leaf, Variable):
            var = leaf
        else:
            var = build_variable(d.type, leaf, {k: s.value for k, s in d.metadata})
        self.objects[d.index] = var
        return var

    def node(self, d: NodeDef) -> Any:
        node = None if self.existing is None else self.existing.get(d.index)
        if node is None:
            node = d.type._graph_create()
        self.objects[d.index] = node
        node._graph_fill([(key, self.visit(c)) for key, c in d.children])
        return node

    def pytree(self, d: PytreeDef) -> Any:
        return d.treedef.unflatten([self.visit(c) for c in d.children])


def unflatten(graphdef: GraphDef, leaves: list[Any]) -> Any:
    """Rebuild a graph from a GraphDef and its leaves (the inverse of ``flatten``)."""
    if len(leaves) != graphdef.num_leaves:
        raise ValueError(f"GraphDef expects {graphdef.num_leaves} leaves, got {len(leaves)}")
    return Unflattener(list(leaves)).unflatten(graphdef.root)
