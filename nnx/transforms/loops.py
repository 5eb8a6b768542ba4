"""``nnx.fori_loop`` and ``nnx.while_loop``: ``jax.lax`` loops whose loop value may hold graph
nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from nnx._graphdef import Flattener
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx.transforms.lift import (
    CallInfo,
    Extraction,
    StaticBox,
    _input_defs,
    apply,
    is_node,
    rebuild,
    rebuild_around_variables,
)
from nnx.variablelib import Variable


class _Loop:
    """A loop value (``fori_loop``/``while_loop``): flattened once; inside the body, rebuilt
    from the carry and read back from what the body returns, which must be the loop value
    again: the same structure and, in every mode, the same Variables (values may change)."""

    def __init__(self, init_val: Any, mode: Mode, name: str):
        self.extraction = Extraction([init_val], mode)
        self.static = self.extraction.static
        self.mode, self.name = mode, name
        self.init = (self.extraction.leaf_values(), self.extraction.ordinary)

    def build(self, carry: tuple) -> tuple[Any, Any]:
        vals, ords = carry
        (val,), u, _ = rebuild(self.static, vals, ords)
        return val, u

    def carry_of(self, out: Any, u: Any) -> tuple[list, list]:
        g = Flattener(tree=not self.mode.graph)
        g.label = "output"
        flat, treedef = jax.tree_util.tree_flatten(out, is_leaf=is_node)
        defs, ords = [], []
        for x in flat:
            if is_node(x):
                defs.append(g.flatten(x))
            else:
                defs.append(None)
                ords.append(x)
        arg_treedef, arg_defs = self.static.args[0]
        if arg_treedef is None:  # the loop value is a graph node itself
            same = len(defs) == 1 and defs[0] == arg_defs[0]
        else:
            same = treedef == arg_treedef and tuple(defs) == arg_defs
        if not same:
            raise ValueError(
                f"nnx.{self.name}: the body must return the loop value with the same structure "
                "(same nodes and Variables, ordinary leaves of the same kinds); it returned a "
                "different one. Update Variables in place (v[...] = ...) instead of replacing "
                "them, and do not add or remove attributes."
            )
        for k, obj in enumerate(g.objects):
            if u.objects.get(k) is not obj:
                raise ValueError(
                    f"nnx.{self.name}: the body returned a new {type(obj).__name__} at "
                    f"'{g.where(k)}'; it must return the loop value's own Variables and nodes "
                    "(update them in place) so that they can be carried."
                )
        return [x._raw_value if isinstance(x, Variable) else x for x in g.leaves], ords

    def finish(self, carry: tuple) -> Any:
        """Write the final carry into the caller's objects; the loop value with new leaves
        (without graph updates: new nodes around the caller's Variables, see
        ``rebuild_around_variables``)."""
        vals, ords = carry
        f = self.extraction.flattener
        info = CallInfo(
            _input_defs(self.static), jax.tree_util.tree_structure(()), (),
            tuple(range(len(f.objects))), False, False, None,
        )
        apply(self.extraction, StaticBox(info), list(vals), [])
        if not self.mode.full:  # the caller's nodes keep their attributes: new nodes, same Variables
            return rebuild_around_variables(self.extraction, vals, ords)[0]
        (arg_treedef, arg_defs), it = self.static.args[0], iter(ords)
        if arg_treedef is None:
            return f.objects[0]
        nodes = iter(f.objects[i] for i in _top_level_objects(arg_defs))
        return arg_treedef.unflatten([next(it) if d is None else next(nodes) for d in arg_defs])


def _top_level_objects(defs: tuple) -> list[int]:
    """The object index of each top-level node or Variable definition (a RefDef's target)."""
    return [d.index for d in defs if d is not None]


def fori_loop(
    lower: int, upper: int, body_fun: Callable[[Any, Any], Any], init_val: Any, *,
    unroll: int | bool | None = None, graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.fori_loop`` where the loop value may hold graph nodes; ``body_fun(i, val)``
    returns the loop value again (the same nodes and Variables, updated in place or with new
    values); the caller's objects are updated and returned in it."""
    loop = _Loop(init_val, resolve_mode(graph, graph_updates), "fori_loop")

    def body(i: Any, carry: tuple) -> tuple:
        val, u = loop.build(carry)
        return loop.carry_of(body_fun(i, val), u)

    kwargs = {} if unroll is None else {"unroll": unroll}
    return loop.finish(jax.lax.fori_loop(lower, upper, body, loop.init, **kwargs))


def while_loop(
    cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: Any, *,
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.while_loop`` where the loop value may hold graph nodes (see ``fori_loop``)."""
    loop = _Loop(init_val, resolve_mode(graph, graph_updates), "while_loop")

    def cond(carry: tuple) -> Any:
        return cond_fun(loop.build(carry)[0])

    def body(carry: tuple) -> tuple:
        val, u = loop.build(carry)
        return loop.carry_of(body_fun(val), u)

    return loop.finish(jax.lax.while_loop(cond, body, loop.init))


__all__ = ["fori_loop", "while_loop"]
