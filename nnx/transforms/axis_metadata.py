"""``nnx.transform_metadata``: keep Variables' per-dimension metadata (``out_sharding`` and
named others) in step with an axis that a transform adds or removes.

Inside a function mapped over an axis (``vmap``, ``scan``), a Variable mapped along axis ``a``
has one dimension fewer, so the entry at ``a`` of its ``out_sharding`` (the partition name) is
taken out for the call and put back after; a Variable created inside leaves with the partition
name inserted at its output axis. Each Variable's own ``remove_axis(index, name)`` /
``add_axis(index, name)`` is called too. ``vmap`` and ``scan`` take the same mapping as
``transform_metadata={nnx.PARTITION_NAME: name, ...}``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax

from nnx import graph as graphlib
from nnx import spmd
from nnx.transforms import prefixes
from nnx.transforms.lift import is_node
from nnx.transforms.prefixes import Carry
from nnx.variablelib import Variable


def _variables_with_axes(tree: Any, spec: Any) -> list[tuple[Variable, Any]]:
    """Each Variable of ``tree`` with the axis its prefix ``spec`` gives it (None: none)."""
    items = jax.tree_util.tree_leaves(tree, is_leaf=is_node)
    found: list[tuple[Variable, Any]] = []
    for item, s in zip(items, prefixes.broadcast_prefix(spec, tree, "transform_metadata"), strict=True):
        if not is_node(item):
            continue
        graphdef, leaves = graphlib.flatten(item)
        axes = prefixes.node_leaf_specs(s, graphdef.paths, leaves)
        found.extend((v, a) for v, a in zip(leaves, axes, strict=True) if isinstance(v, Variable))
    return found


def _axis(a: Any) -> int | None:
    return a if isinstance(a, int) and a is not Carry and not isinstance(a, bool) else None


def call_with_axis_metadata(
    f: Callable[..., Any], args: tuple, kwargs: dict, in_axes: Any, out_axes: Any,
    metadata: Mapping[str, Any],
) -> Any:
    """Run ``f(*args, **kwargs)`` with the mapped axis taken out of the arguments' Variables'
    metadata, put back after, and added to Variables created inside (module docstring)."""
    arg_specs = list(in_axes) if isinstance(in_axes, list | tuple) else [in_axes] * len(args)
    mapped: list[tuple[Variable, int]] = []
    seen: set[int] = set()
    for arg, spec in zip(args, arg_specs, strict=True):
        for v, a in _variables_with_axes(arg, None if spec is Carry else spec):
            seen.add(id(v))
            if _axis(a) is not None:
                mapped.append((v, a))
    for v, a in mapped:
        spmd.remove_axis(v, a, metadata)
    out = f(*args, **kwargs)
    for v, a in mapped:
        spmd.add_axis(v, a, metadata)
    # Variables created inside: in the arguments (new attributes) and in the outputs.
    new: list[tuple[Variable, Any]] = []
    for arg, spec in zip(args, arg_specs, strict=True):
        new.extend(_variables_with_axes(arg, None if spec is Carry else spec))
    out_spec = None if out_axes is Carry else (
        tuple(None if a is Carry else a for a in out_axes) if isinstance(out_axes, tuple) else out_axes
    )
    new.extend(_variables_with_axes(out, out_spec))
    done: set[int] = set()
    for v, a in new:
        if id(v) not in seen and id(v) not in done and _axis(a) is not None:
            done.add(id(v))
            spmd.add_axis(v, a, metadata)
    return out


def transform_metadata(
    f: Callable[..., Any] | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    partition: str | None,
    graph: bool | None = None,
) -> Any:
    """Keep the Variables' ``out_sharding`` in step with the axis a transform maps over, for
    a function that a ``vmap``/``scan`` with the same axes then maps (module docstring).

    Args:
      f: the function (or use as a decorator).
      in_axes: the axes of the arguments, as given to the transform.
      out_axes: the axes of the outputs.
      partition: the mesh axis name of the mapped axis (or None).
      graph: accepted for Flax compatibility (graph and tree mode behave the same here).
    """
    del graph
    if f is None:
        return lambda fn: transform_metadata(fn, in_axes=in_axes, out_axes=out_axes, partition=partition)
    metadata = {spmd.PARTITION_NAME: partition}

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call_with_axis_metadata(f, args, kwargs, in_axes, out_axes, metadata)

    return wrapper


__all__ = ["transform_metadata"]
