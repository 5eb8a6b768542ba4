"""Sharding metadata: name the mesh axes each Variable's dimensions are split over.

``with_partitioning(init, ("data", "model"))`` makes an initializer whose Variables carry an
``out_sharding`` entry. When a mesh is known (passed as ``mesh=`` or set with
``jax.set_mesh``), the value is sharded as it is created: placed with ``jax.device_put``
outside a trace, constrained inside one (``jax.sharding.reshard`` for Explicit mesh axes,
``jax.lax.with_sharding_constraint`` for Auto ones). With no mesh the names are only recorded.
``get_partition_spec`` and ``get_named_sharding`` turn that metadata into ``PartitionSpec`` /
``NamedSharding`` trees shaped like a State, for ``jax.jit`` or ``nnx.jit`` shardings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nnx._placement import sharding_names_of
from nnx.variablelib import Variable, VariableMetadata, with_metadata


def sharding_names(variable: Variable) -> tuple | None:
    """The axis names recorded on ``variable`` (None when it has none)."""
    return sharding_names_of(variable._metadata)


def with_partitioning(
    initializer: Callable[..., Any],
    sharding: Sequence[str | None] | PartitionSpec,
    mesh: Mesh | None = None,
    **metadata: Any,
) -> Callable[..., VariableMetadata]:
    """Wrap ``initializer`` so the Variable built from it is sharded over ``sharding``'s axes.

    Args:
      initializer: e.g. ``nnx.initializers.lecun_normal()``.
      sharding: one mesh axis name (or None) per dimension of the created value.
      mesh: the mesh to shard on; default: the one set with ``jax.set_mesh``, if any.
      **metadata: further metadata for the Variable.
    """
    extra = {"mesh": mesh} if mesh is not None else {}
    return with_metadata(initializer, out_sharding=tuple(sharding), **extra, **metadata)


def _map_variables(tree: Any, fn: Callable[[Any], Any]) -> Any:
    def leaf(x: Any) -> Any:
        if isinstance(x, Variable):
            return x.copy(fn(x))
        return fn(x)

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, Variable))


def get_partition_spec(tree: Any) -> Any:
    """``tree`` (a State, Module or pytree) with each value replaced by its ``PartitionSpec``
    (``PartitionSpec()`` for values without sharding metadata); Variables stay Variables."""

    def spec(x: Any) -> PartitionSpec:
        names = sharding_names(x) if isinstance(x, Variable) else None
        return PartitionSpec(*names) if names is not None else PartitionSpec()

    return _map_variables(tree, spec)


def get_named_sharding(tree: Any, mesh: Mesh) -> Any:
    """Like ``get_partition_spec`` but with ``NamedSharding(mesh, spec)`` values."""
    specs = get_partition_spec(tree)
    return _map_variables(specs, lambda s: NamedSharding(mesh, s.get_value() if isinstance(s, Variable) else s))


__all__ = ["get_named_sharding", "get_partition_spec", "with_partitioning"]
