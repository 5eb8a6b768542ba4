"""``nnx.cond``, ``nnx.switch``, ``nnx.eval_shape`` and ``nnx.shard_map`` for graph nodes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nnx._graphdef import Unflattener
from nnx._modes import Mode
from nnx._modes import resolve as resolve_mode
from nnx._walks import reachable
from nnx.transforms import prefixes
from nnx.transforms.lift import (
    Extraction,
    apply,
    collect,
    collect_values_only,
    keep_unchanged,
    rebuild,
    reject_bound_method,
)
from nnx.transforms.programs import ProgramCache
from nnx.variablelib import Variable


def _branches_call(
    index_fn: Callable[[list], Any], branches: Sequence[Callable[..., Any]], operands: tuple,
    mode: Mode,
) -> Any:
    extraction = Extraction(list(operands), mode)
    values = extraction.leaf_values()
    static = extraction.static

    def make(branch: Callable[..., Any]) -> Callable[..., Any]:
        def pure(vals: list, ords: list) -> tuple:
            a, u, inner = rebuild(static, vals, ords)
            # All leaves are returned so every branch has the same output structure.
            return collect(static, inner, u, branch(*a))

        return pure

    new_vals, out_ord, box = index_fn([make(b) for b in branches])(values, extraction.ordinary)
    return apply(extraction, box, new_vals, out_ord)


def cond(
    pred: Any, true_fun: Callable[..., Any], false_fun: Callable[..., Any], *operands: Any,
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.cond`` whose operands may hold graph nodes; both branches must leave the
    nodes' structure the same, and their updates are written back."""
    return _branches_call(
        lambda fns: lambda v, o: jax.lax.cond(pred, fns[0], fns[1], v, o),
        (true_fun, false_fun), operands, resolve_mode(graph, graph_updates),
    )


def switch(
    index: Any, branches: Sequence[Callable[..., Any]], *operands: Any,
    graph: bool | None = None, graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.switch`` whose operands may hold graph nodes."""
    return _branches_call(
        lambda fns: lambda v, o: jax.lax.switch(index, fns, v, o), tuple(branches), operands,
        resolve_mode(graph, graph_updates),
    )


def eval_shape(
    f: Callable[..., Any], *args: Any, graph: bool | None = None,
    graph_updates: bool | None = None, **kwargs: Any,
) -> Any:
    """Run ``f`` abstractly: outputs (Modules included) hold ``jax.ShapeDtypeStruct`` leaves and
    nothing is allocated; the arguments are not changed. ``nnx.eval_shape(lambda: Model(...))``
    gives an abstract model, e.g. as a checkpoint restore target."""
    reject_bound_method(f, "eval_shape")
    mode = resolve_mode(graph, graph_updates)
    if mode.graph and not mode.full:
        _check_no_shared_variables((*args, kwargs), "eval_shape")
    extraction = Extraction([*args, kwargs], mode)
    values = extraction.leaf_values()
    static = extraction.static

    def pure(vals: list, ords: list) -> tuple:
        a, u, inner = rebuild(static, vals, ords)
        *pos, kw = a
        return collect(static, inner, u, f(*pos, **kw))

    new_vals, out_ord, box = jax.eval_shape(pure, values, extraction.ordinary)
    info = box.value
    # Outputs only: the arguments keep their concrete values; an argument returned as an output
    # comes back as the caller's object.
    u = Unflattener(list(new_vals))
    u.objects.update(
        {k: extraction.flattener.objects[j] for k, j in enumerate(info.pre_of_post) if j is not None}
    )
    for defs in info.in_defs:
        for d in defs:
            u.skip(d)
    it = iter(out_ord)
    items = [next(it) if d is None else u.unflatten(d) for d in info.out_defs]
    return info.out_treedef.unflatten(items)


def _check_no_shared_variables(args: tuple, where: str) -> None:
    """A ValueError when one Variable is reached from two arguments (or two places of the
    arguments' pytrees), which ``graph_updates=False`` cannot carry apart (as Flax's
    ``nnx.eval_shape`` refuses it)."""
    seen: dict[int, str] = {}
    for _, here, obj in reachable(args, "args"):
        if isinstance(obj, Variable):
            first = seen.setdefault(id(obj), here)
            if first != here:
                raise ValueError(
                    f"Duplicate {type(obj).__name__} found at paths:\n  - {first}\n  - {here}\n"
                    f"nnx.{where} with graph_updates=False does not support Variable aliasing "
                    "(the same Variable in two arguments). Pass it once, pass a copy "
                    f"(nnx.clone), or use nnx.{where}(..., graph=True, graph_updates=True)."
                )


def shard_map(
    f: Callable[..., Any] | None = None,
    *,
    mesh: Any,
    in_specs: Any,
    out_specs: Any,
    check_vma: bool = True,
    axis_names: Any = frozenset(),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.shard_map`` for functions of graph nodes.

    ``in_specs`` has one entry per argument (or one for all): a ``PartitionSpec`` for all of its
    arrays, a prefix pytree of them, or for a graph node a State of specs or an
    ``nnx.StateSharding``. Inside, each argument holds its per-device blocks; updates to a
    Module's Variables come back with the Module's input specs. ``out_specs`` is a prefix of the
    output, which may not contain graph nodes.
    """
    if f is None:
        return lambda fn: shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                    check_vma=check_vma, axis_names=axis_names, graph=graph,
                                    graph_updates=graph_updates)
    reject_bound_method(f, "shard_map")
    mode = resolve_mode(graph, graph_updates)
    for name, spec in (("in_specs", in_specs), ("out_specs", out_specs)):
        prefixes.check_prefix(spec, name, "shard_map", mode)
    programs = ProgramCache()

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        extraction = Extraction(list(args), mode)
        specs = prefixes.per_argument(in_specs, len(args), "nnx.shard_map in_specs")
        leaf_specs, ord_specs = prefixes.argument_leaf_specs(
            extraction, args, specs, "nnx.shard_map in_specs"
        )
        leaf_specs = tuple(P() if s is None else s for s in leaf_specs)
        ord_specs = tuple(P() if s is None else s for s in ord_specs)
        static = extraction.static

        def make() -> tuple[Callable[..., Any], list[Any], list[Any]]:
            def pure(vals: list, ords: list) -> tuple:
                a, u, inner = rebuild(static, vals, ords)
                return collect_values_only(static, inner, u, f(*a), "nnx.shard_map", vals)

            kwargs = {"axis_names": axis_names} if axis_names else {}
            # Under jax.jit so that eager calls are traced once per signature, as in nnx.jit.
            all_out_specs = (list(leaf_specs), out_specs, P())
            mapped = jax.jit(
                jax.shard_map(
                    pure, mesh=mesh, in_specs=(list(leaf_specs), list(ord_specs)),
                    out_specs=all_out_specs, check_vma=check_vma, **kwargs,
                ),
                # the outputs keep the specs as written (jit alone would normalise P(None))
                out_shardings=_named(mesh, all_out_specs),
            )
            return mapped, _placements(mesh, leaf_specs), _placements(mesh, ord_specs)

        mapped, leaf_places, ord_places = programs.get((static, leaf_specs, ord_specs), make)
        values = _place(extraction.leaf_values(), leaf_places)
        new_vals, out, box = mapped(values, _place(extraction.ordinary, ord_places))
        new_vals = keep_unchanged(box.value, new_vals, values)
        return apply(extraction, box, new_vals, jax.tree_util.tree_leaves(out))

    return wrapper


def _named(mesh: Any, specs: Any) -> Any:
    """``specs`` (a prefix tree of PartitionSpecs) as NamedShardings on a concrete ``mesh``."""
    if not isinstance(mesh, jax.sharding.Mesh):
        return None
    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s) if isinstance(s, P) else s, specs,
        is_leaf=lambda x: isinstance(x, P) or x is None,
    )


def _placements(mesh: Any, specs: Sequence[Any]) -> list[Any]:
    """The sharding of each input on ``mesh`` (None for all when the mesh is abstract)."""
    if not isinstance(mesh, jax.sharding.Mesh):
        return [None] * len(specs)
    return [NamedSharding(mesh, s) for s in specs]


def _place(values: Sequence[Any], placements: Sequence[Any]) -> list[Any]:
    """``values`` on the mesh as their specs say, so that the first call sees the same input
    types as the calls after it (whose Variables come back on the mesh): one trace, not two.
    Variables keep the placed arrays, so this copies each array once."""
    return [
        jax.device_put(v, s) if s is not None and isinstance(v, jax.Array)
        and not isinstance(v, jax.core.Tracer) and v.sharding != s else v
        for v, s in zip(values, placements, strict=True)
    ]


__all__ = ["cond", "eval_shape", "shard_map", "switch"]
