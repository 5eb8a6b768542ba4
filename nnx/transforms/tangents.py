"""The differentiable leaves of an ``Extraction`` and the (co)tangent pytrees the autodiff
transforms hand to users or take from them.

A (co)tangent for an argument has one of two shapes:

- graph mode with graph updates: a ``State`` for each graph node (its differentiable Variables,
  by path), a Variable for a Variable, the array itself for an array;
- otherwise (``graph=False`` or ``graph_updates=False``): a copy of the argument with the
  (co)tangents in its Variables' and arrays' places, as ``jax.grad`` gives for a pytree; Modules
  keep their type and static attributes, and objects shared inside are shared in the copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnx import filterlib
from nnx._graphdef import DefVisitor, NodeDef, RefDef, Unflattener, VariableDef
from nnx._modes import Mode
from nnx._typing import path_str
from nnx.statelib import State
from nnx.transforms.lift import ArgsDef, Extraction, argument_items, is_node
from nnx.variablelib import Variable


class Selection(NamedTuple):
    """Which leaves of an Extraction have tangents: ``leaves`` indexes ``extraction.leaves``,
    ``ordinary`` indexes ``extraction.ordinary`` (both in increasing order)."""

    leaves: tuple[int, ...]
    ordinary: tuple[int, ...]


def select(
    extraction: Extraction, args: Sequence[Any], filters: Mapping[int, Any]
) -> Selection:
    """The leaves of the arguments ``filters`` names (argument index -> filter).

    Every array of such an argument is chosen, and every Variable given directly (as the
    argument or inside a container); in a graph node, the Variables the filter matches.
    """
    chosen: set[int] = set()
    for a, (_, items) in enumerate(argument_items(extraction, args)):
        if a not in filters:
            continue
        pred = filterlib.to_predicate(filters[a])
        for item, leaf_range in items:
            if leaf_range is None:
                continue
            for j in range(*leaf_range):
                if isinstance(item, Variable) or pred(
                    extraction.paths[j], extraction.leaves[j]
                ):
                    chosen.add(j)
    ordinary = tuple(j for j, a in enumerate(extraction.ordinary_args) if a in filters)
    return Selection(tuple(sorted(chosen)), ordinary)


# -- aliasing -------------------------------------------------------------------------------


class _Objects(DefVisitor):
    """The reference-table indices an entry defines or refers to."""

    __slots__ = ()

    def node(self, d: NodeDef) -> list[int]:
        return [d.index, *(i for _, c in d.children for i in self.visit(c))]

    def variable(self, d: VariableDef) -> list[int]:
        return [d.index]

    def ref(self, d: RefDef) -> list[int]:
        return [d.index]

    def pytree(self, d: Any) -> list[int]:
        return [i for c in d.children for i in self.visit(c)]

    def leaf(self, d: Any) -> list[int]:
        return []

    def static(self, d: Any) -> list[int]:
        return []


_OBJECTS = _Objects()


def _variable_uses(extraction: Extraction) -> dict[int, list[int]]:
    """Per Variable (reference-table index), the arguments that reach it, in order."""
    objects = extraction.flattener.objects
    uses: dict[int, list[int]] = {}
    for a, (_, defs) in enumerate(extraction.static.args):
        for d in defs:
            if d is None:
                continue
            for i in _OBJECTS.visit(d):
                if isinstance(objects[i], Variable):
                    uses.setdefault(i, []).append(a)
    return uses


def check_consistent_aliasing(
    extraction: Extraction, differentiable: set[int], where: str, names: Sequence[str]
) -> None:
    """Raise if a Variable is reached from a differentiable and a non-differentiable argument
    (they would need a tangent and none at once). ``names`` labels the arguments."""
    for i, users in _variable_uses(extraction).items():
        kinds = {a in differentiable for a in users}
        if len(kinds) > 1:
            var = extraction.flattener.objects[i]
            listed = ", ".join(
                f"{names[a]} ({'differentiated' if a in differentiable else 'not differentiated'})"
                for a in dict.fromkeys(users)
            )
            raise ValueError(
                f"{where}: Inconsistent aliasing detected: the same {type(var).__name__} is "
                f"reached from {listed}. Pass it in one argument only, or clone it (nnx.clone)."
            )


def check_no_shared_variables(extraction: Extraction, where: str, names: Sequence[str]) -> None:
    """Raise if a Variable is reached twice among the arguments (``names`` labels them)."""
    for i, users in _variable_uses(extraction).items():
        if len(users) > 1:
            var = extraction.flattener.objects[i]
            listed = ", ".join(names[a] for a in users)
            raise ValueError(
                f"{where}: Duplicate {type(var).__name__} reached from {listed}. With graph=False "
                "or graph_updates=False the arguments cannot share Variables; pass distinct "
                "Variables (nnx.clone), or use graph=True, graph_updates=True."
            )


# -- argument-shaped (co)tangents -------------------------------------------------------------


class _Builder(Unflattener):
    """An Unflattener whose leaves may be None for "nothing here": a Variable with no value
    becomes None instead of a Variable (``masked``), or a Variable holding None."""

    __slots__ = ("masked",)

    def __init__(self, leaves: list[Any], masked: bool):
        super().__init__(leaves)
        self.masked = masked

    def variable(self, d: VariableDef) -> Any:
        if self.masked and self.leaves[self.pos] is None:
            self.pos += 1
            self.objects[d.index] = None
            return None
        return super().variable(d)


def build_args(
    static: ArgsDef, leaf_values: Sequence[Any], ordinary: Sequence[Any], which: Sequence[int],
    masked: bool = False,
) -> dict[int, Any]:
    """Build the arguments ``which`` (indices into ``static.args``) with these leaf values,
    skipping the others; the chosen ones must not refer to objects of skipped ones. With
    ``masked``, a None leaf value stands for the Variable itself (see ``_Builder``)."""
    wanted = set(which)
    u = _Builder(list(leaf_values), masked)
    it = iter(ordinary)
    built: dict[int, Any] = {}
    for a, (treedef, defs) in enumerate(static.args):
        if a not in wanted:
            for d in defs:
                if d is None:
                    next(it)
                else:
                    u.skip(d)
            continue
        if treedef is None:
            built[a] = u.unflatten(defs[0])
            continue
        items = [next(it) if d is None else u.unflatten(d) for d in defs]
        built[a] = treedef.unflatten(items)
    return built


def zero_cotangent(x: Any) -> Any:
    """The zero (co)tangent of a value: zeros of its dtype, float0 for integers and booleans."""
    x = x._raw_value if isinstance(x, Variable) else x
    if x is None:
        return None
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def full_values(
    extraction: Extraction, selection: Selection, leaf_values: Sequence[Any],
    ord_values: Sequence[Any], argnums: Sequence[int],
) -> tuple[list[Any], list[Any]]:
    """Values for the leaves of the arguments ``argnums``: the given ones for the selection,
    zero cotangents for the others (None for leaves of other arguments)."""
    wanted = set(argnums)
    leaves: list[Any] = [None] * len(extraction.leaves)
    for j, v in zip(selection.leaves, leaf_values, strict=True):
        leaves[j] = v
    ords: list[Any] = [None] * len(extraction.ordinary)
    for j, v in zip(selection.ordinary, ord_values, strict=True):
        ords[j] = v
    for j, a in enumerate(extraction.leaf_args):
        if leaves[j] is None and a in wanted:
            leaves[j] = zero_cotangent(extraction.leaves[j])
    for j, a in enumerate(extraction.ordinary_args):
        if ords[j] is None and a in wanted:
            ords[j] = zero_cotangent(extraction.ordinary[j])
    return leaves, ords


# -- State-shaped cotangents (graph mode with graph updates) -----------------------------------


def state_cotangents(
    extraction: Extraction, args: Sequence[Any], argnums: Sequence[int], selection: Selection,
    leaf_values: Sequence[Any], ord_values: Sequence[Any],
) -> list[Any]:
    """Per argument in ``argnums``: its cotangent with a State for each graph node (its selected
    Variables, by path), a Variable for a Variable (an empty State where it was already
    reached), and the cotangent itself for an array."""
    of_leaf = dict(zip(selection.leaves, leaf_values, strict=True))
    of_ord = dict(zip(selection.ordinary, ord_values, strict=True))
    per_arg = argument_items(extraction, args)
    ord_positions = _ordinary_positions(extraction)
    result = []
    for a in argnums:
        treedef, items = per_arg[a]
        positions = iter(ord_positions.get(a, ()))
        out = []
        for item, leaf_range in items:
            if leaf_range is None:
                out.append(of_ord.get(next(positions)))
                continue
            picked = [j for j in range(*leaf_range) if j in of_leaf]
            if isinstance(item, Variable) and picked:
                out.append(extraction.leaves[picked[0]].copy(of_leaf[picked[0]]))
            else:
                out.append(State.from_flat_path(
                    [(extraction.paths[j], _as_variable(extraction.leaves[j], of_leaf[j]))
                     for j in picked]
                ))
        result.append(out[0] if is_node(args[a]) else treedef.unflatten(out))
    return result


def _as_variable(leaf: Any, value: Any) -> Any:
    return leaf.copy(value) if isinstance(leaf, Variable) else value


def _ordinary_positions(extraction: Extraction) -> dict[int, list[int]]:
    positions: dict[int, list[int]] = {}
    for j, a in enumerate(extraction.ordinary_args):
        positions.setdefault(a, []).append(j)
    return positions


# -- reading (co)tangents given by users ----------------------------------------------------


def argument_tangent_leaves(
    extraction: Extraction, a: int, tangent: Any, mode: Mode, where: str
) -> tuple[dict[int, Any], dict[int, Any]]:
    """The values of an argument-shaped (co)tangent of argument ``a``: ``{leaf index: value}``
    and ``{ordinary index: value}`` (a None tangent gives nothing). Raises when its structure
    does not match the argument's."""
    leaf_idx = [j for j, x in enumerate(extraction.leaf_args) if x == a]
    ord_idx = [j for j, x in enumerate(extraction.ordinary_args) if x == a]
    if tangent is None:
        return {}, {}
    t = Extraction([tangent], Mode(mode.graph, False))
    paths = [tuple(extraction.paths[j]) for j in leaf_idx]
    if [tuple(p) for p in t.paths] != paths or len(t.ordinary) != len(ord_idx):
        raise ValueError(
            f"{where}: the (co)tangent for argument {a} does not match its structure: expected "
            f"{len(paths)} state leaves at {[path_str(p) for p in paths]} and {len(ord_idx)} "
            f"other leaves, got {len(t.paths)} at {[path_str(tuple(p)) for p in t.paths]} and "
            f"{len(t.ordinary)}. Build it from the argument, e.g. jax.tree.map(f, arg)."
        )
    return (
        dict(zip(leaf_idx, t.leaf_values(), strict=True)),
        dict(zip(ord_idx, t.ordinary, strict=True)),
    )


def state_tangent_leaves(
    extraction: Extraction, a: int, item_ranges: Sequence[tuple[Any, tuple[int, int] | None]],
    treedef: Any, tangent: Any, where: str,
) -> tuple[dict[int, Any], dict[int, Any]]:
    """The values of a State-shaped (co)tangent of argument ``a`` (see the module docstring):
    ``{leaf index: value}`` and ``{ordinary index: value}``; missing entries give nothing."""
    if tangent is None:
        return {}, {}
    ord_idx = iter(j for j, x in enumerate(extraction.ordinary_args) if x == a)
    if treedef is None:
        cts = [tangent]
    else:
        try:
            cts = treedef.flatten_up_to(tangent)
        except (ValueError, TypeError) as e:
            raise TypeError(
                f"{where}: the cotangent for argument {a} does not match its structure "
                f"{treedef}: {e}"
            ) from None
    leaves: dict[int, Any] = {}
    ords: dict[int, Any] = {}
    for (item, leaf_range), ct in zip(item_ranges, cts, strict=True):
        if leaf_range is None:
            j = next(ord_idx)
            if ct is not None:
                ords[j] = ct
            continue
        if ct is None:
            continue
        start, stop = leaf_range
        if isinstance(item, Variable) and not isinstance(ct, State):
            if stop > start:
                leaves[start] = ct._raw_value if isinstance(ct, Variable) else ct
            continue
        if not isinstance(ct, Mapping):
            raise TypeError(
                f"{where}: the cotangent for the {type(item).__name__} in argument {a} must be "
                f"an nnx.State shaped like its differentiable state, got {type(ct).__name__}"
            )
        flat = State.flatten_mapping(ct)
        for j in range(start, stop):
            v = flat.get(tuple(extraction.paths[j]))
            if v is not None:
                leaves[j] = v._raw_value if isinstance(v, Variable) else v
    return leaves, ords

