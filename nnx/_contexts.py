"""Split and merge contexts: several splits (merges) that share one reference table, and update
contexts that carry the identity of objects across a pure function, as the transforms do.

Inside ``with nnx.update_context(tag):`` four steps write what a function did back into the
caller's objects:

1. outer split (``with nnx.split_context(tag) as ctx: ctx.split(node)``): the objects of the
   walk are remembered by index;
2. inner merge (``nnx.merge_context(tag, inner=True)``): new objects are built, each
   remembering the index of the outer object it stands for;
3. inner split (``nnx.split_context(tag)`` again): the GraphDef records, per object, the index
   of the outer object it stands for (None for one created in between);
4. outer merge (``nnx.merge_context(tag, inner=False)``): the outer objects are updated in
   place from the result (their identity kept) and new objects are created.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import jax

from nnx import _structure as structure
from nnx._graphdef import Flattener, GraphDef, Unflattener
from nnx.statelib import partition_pairs
from nnx.variablelib import Variable

F = TypeVar("F", bound=Callable[..., Any])


class InnerGraphDef(GraphDef):
    """The GraphDef of an inner split: ``outer[i]`` is the index, in the outer split, of the
    object with index ``i`` here (None for an object created inside)."""

    __slots__ = ("outer",)

    def __init__(self, root: Any, paths: tuple, outer: tuple):
        super().__init__(root, paths)
        self.outer = outer
        self._hash = hash((self._hash, outer))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, InnerGraphDef) and self._hash == other._hash
            and self.root == other.root and self.outer == other.outer
        )

    __hash__ = GraphDef.__hash__


jax.tree_util.register_pytree_node(InnerGraphDef, lambda g: ((), g), lambda g, _: g)


class UpdateContext:
    """What one ``update_context`` has seen: the outer objects (after the outer split) and the
    inner objects standing for them (after the inner merge)."""

    def __init__(self, tag: Hashable):
        self.tag = tag
        self.outer: list[Any] | None = None
        self.inner: dict[int, int] | None = None  # id(inner object) -> outer index
        self._inner_objects: list[Any] = []  # keeps the ids in ``inner`` valid


class _Contexts(threading.local):
    def __init__(self) -> None:
        self.stacks: dict[Hashable, list[UpdateContext]] = {}


_CONTEXTS = _Contexts()


class update_context:  # noqa: N801 - the Flax name
    """Open an update context named ``tag`` (a ``with`` block, or a decorator for the calls of
    a function); see the module docstring."""

    def __init__(self, tag: Hashable):
        self.tag = tag

    def __enter__(self) -> UpdateContext:
        ctx = UpdateContext(self.tag)
        _CONTEXTS.stacks.setdefault(self.tag, []).append(ctx)
        return ctx

    def __exit__(self, *exc: Any) -> None:
        stack = _CONTEXTS.stacks[self.tag]
        stack.pop()
        if not stack:
            del _CONTEXTS.stacks[self.tag]

    def __call__(self, f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with update_context(self.tag):
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def current_update_context(tag: Hashable) -> UpdateContext:
    """The innermost open update context named ``tag``."""
    stack = _CONTEXTS.stacks.get(tag)
    if not stack:
        raise ValueError(f"No update context named {tag!r} is open; use nnx.update_context({tag!r}).")
    return stack[-1]


class SplitContext:
    """Splits that share one reference table: a node split a second time comes back as a
    reference to the first (an empty State)."""

    def __init__(self, ctx: UpdateContext | None):
        self._ctx = ctx
        self._flattener = Flattener()

    def split(self, node: Any, *filters: Any) -> tuple[Any, ...]:
        """``nnx.split`` within this context; see ``nnx.split`` for ``filters``."""
        f = self._flattener
        start = len(f.leaves)
        root = f.flatten(node)
        paths, leaves = tuple(f.paths[start:]), f.leaves[start:]
        ctx = self._ctx
        if ctx is not None and ctx.outer is not None:
            inner = ctx.inner or {}
            graphdef: GraphDef = InnerGraphDef(
                root, paths, tuple(inner.get(id(obj)) for obj in f.objects)
            )
        else:
            graphdef = GraphDef(root, paths)
        states = partition_pairs(list(zip(paths, leaves, strict=True)), filters or (...,),
                                 exhaustive=True)
        return (graphdef, *states)


@contextlib.contextmanager
def split_context(tag: Hashable | None = None) -> Iterator[SplitContext]:
    """A context whose ``split`` calls share references (see ``SplitContext``); with ``tag``,
    the outer or inner split of that update context."""
    ctx = current_update_context(tag) if tag is not None else None
    split_ctx = SplitContext(ctx)
    try:
        yield split_ctx
    finally:
        if ctx is not None:
            if ctx.outer is None:
                ctx.outer = list(split_ctx._flattener.objects)
            else:
                ctx.inner, ctx._inner_objects = None, []
        del split_ctx._flattener


class MergeContext:
    """Merges that share one reference table (the counterpart of ``SplitContext``)."""

    def __init__(self, ctx: UpdateContext | None, inner: bool | None):
        self._ctx = ctx
        self._inner = inner
        self._objects: dict[int, Any] = {}

    def merge(self, graphdef: GraphDef, state: Any, /, *states: Any) -> Any:
        """``nnx.merge`` within this context (the Variables of the States are copied)."""
        from nnx.graph import leaves_for  # builds on this module's imports

        leaves = [v.copy() if isinstance(v, Variable) else v
                  for v in leaves_for(graphdef, (state, *states))]
        ctx, existing = self._ctx, None
        if ctx is not None and self._inner is False and isinstance(graphdef, InnerGraphDef):
            outer = ctx.outer or []
            existing = {k: outer[j] for k, j in enumerate(graphdef.outer) if j is not None}
            structure.bump()
        u = Unflattener(leaves, existing)
        u.objects = self._objects
        return u.unflatten(graphdef.root)


@contextlib.contextmanager
def merge_context(tag: Hashable | None = None, inner: bool | None = None) -> Iterator[MergeContext]:
    """A context whose ``merge`` calls share references; with ``tag``, the inner
    (``inner=True``) or outer (``inner=False``) merge of that update context."""
    if tag is not None and inner is None:
        raise ValueError("merge_context(tag, inner=...) needs inner=True or inner=False with a tag.")
    ctx = current_update_context(tag) if tag is not None else None
    merge_ctx = MergeContext(ctx, inner)
    try:
        yield merge_ctx
    finally:
        if ctx is not None and inner:
            ctx.inner = {id(obj): k for k, obj in merge_ctx._objects.items()}
            ctx._inner_objects = list(merge_ctx._objects.values())
        del merge_ctx._objects
