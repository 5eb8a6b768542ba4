"""Put a value on a mesh by per-dimension axis names: what a Variable's sharding metadata
(``out_sharding``) does when the Variable is created. Knows no nnx type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

SHARDING_KEYS = ("out_sharding", "sharding_names", "sharding")  # current name first


def sharding_names_of(metadata: dict[str, Any]) -> tuple | None:
    """The axis names in a Variable's metadata dict (None when there are none)."""
    for key in SHARDING_KEYS:
        names = metadata.get(key)
        if names is not None and not isinstance(names, jax.sharding.Sharding):
            return tuple(names)
    return None


def _context_mesh() -> Any:
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def _concrete_mesh() -> Mesh | None:
    mesh = jax.sharding.get_mesh()
    return None if mesh is None or mesh.empty else mesh


def shard_value(value: Any, names: Sequence[str | None], mesh: Mesh | None = None) -> Any:
    """Shard ``value`` over the mesh axes ``names`` if a mesh is known; else return it as is."""
    if not hasattr(value, "shape"):
        return value
    if len(names) != len(value.shape):
        raise ValueError(
            f"sharding {tuple(names)} names {len(names)} dimensions but the value has shape "
            f"{tuple(value.shape)}"
        )
    spec = PartitionSpec(*names)
    if isinstance(value, jax.core.Tracer):
        target = mesh if mesh is not None else _context_mesh()
        if target is None:
            return value
        named = [n for n in names if n is not None]
        flat_names = [a for n in named for a in ((n,) if isinstance(n, str) else n)]
        explicit = any(target.axis_types[target.axis_names.index(a)] == AxisType.Explicit for a in flat_names)
        if explicit:
            if mesh is not None and _context_mesh() is None:
                with jax.set_mesh(mesh):
                    return jax.sharding.reshard(value, spec)
            return jax.sharding.reshard(value, spec)
        sharding = NamedSharding(mesh, spec) if mesh is not None else spec
        return jax.lax.with_sharding_constraint(value, sharding)
    target = mesh if mesh is not None else _concrete_mesh()
    if target is None:
        return value
    return jax.device_put(value, NamedSharding(target, spec))
