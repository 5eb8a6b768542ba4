"""Put a value on a mesh by a Variable's sharding metadata (``out_sharding``) when the Variable
is created, and the logical axis rules that rename the axes first. Knows no nnx type.

``out_sharding`` may be one axis name (or None) per dimension, a ``PartitionSpec``, a
``NamedSharding`` (which brings its mesh) or a ``Format`` (a layout and a sharding). Names are
first renamed by the Variable's ``sharding_rules`` metadata and the rules of the innermost
``logical_axis_rules`` block, e.g. ``(("embed", "model"),)`` maps the logical axis ``embed``
to the mesh axis ``model``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.experimental.layout import Format
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

SHARDING_KEYS = ("out_sharding", "sharding_names", "sharding")  # current name first
Rules = Sequence[tuple[str, Any]]


class _RulesStore(threading.local):
    def __init__(self) -> None:
        self.rules: tuple = ()


_RULES = _RulesStore()


@contextlib.contextmanager
def logical_axis_rules(rules: Rules) -> Iterator[None]:
    """Within the block, rename logical axis names to mesh axes by ``rules``: pairs
    ``(logical, mesh_axis)``; Variables created inside are sharded on the mesh axes.

    Args:
      rules: ``((logical_name, mesh_axis_or_None), ...)``.
    """
    previous = _RULES.rules
    _RULES.rules = tuple(tuple(r) for r in rules)
    try:
        yield
    finally:
        _RULES.rules = previous


def current_rules() -> tuple:
    """The rules of the innermost ``logical_axis_rules`` block (empty outside one)."""
    return _RULES.rules


def combined_rules(local: Rules | None) -> dict[str, Any]:
    """The context rules and a Variable's own ``sharding_rules``, which must agree."""
    rules = dict(_RULES.rules)
    for alias, axis in local or ():
        if alias in rules and rules[alias] != axis:
            raise ValueError(
                f"Inconsistent logical axis rules for {alias!r}: {rules[alias]!r} in "
                f"nnx.logical_axis_rules and {axis!r} in the Variable's sharding_rules."
            )
        rules[alias] = axis
    return rules


def _rename(names: Sequence[Any], rules: dict[str, Any]) -> tuple:
    return tuple(rules.get(n, n) if isinstance(n, str) else n for n in names)


def placement_of(metadata: dict[str, Any]) -> Any:
    """What a Variable's metadata asks to shard its value by: a tuple of mesh axis names (the
    logical rules applied), a ``NamedSharding`` or a ``Format``; None when it asks nothing."""
    for key in SHARDING_KEYS:
        sharding = metadata.get(key)
        if sharding is None:
            continue
        rules = combined_rules(metadata.get("sharding_rules"))
        if isinstance(sharding, Format):
            inner = sharding.sharding
            if isinstance(inner, NamedSharding) and rules:
                inner = NamedSharding(inner.mesh, PartitionSpec(*_rename(inner.spec, rules)))
            return Format(sharding.layout, inner)
        if isinstance(sharding, NamedSharding):
            if rules:
                return NamedSharding(sharding.mesh, PartitionSpec(*_rename(sharding.spec, rules)))
            return sharding
        if isinstance(sharding, jax.sharding.Sharding):
            return sharding
        return _rename(tuple(sharding), rules)
    return None


sharding_names_of = placement_of  # the name variablelib uses


def spec_of(metadata: dict[str, Any]) -> PartitionSpec | None:
    """The ``PartitionSpec`` a Variable's metadata names (None when it names none)."""
    placement = placement_of(metadata)
    if placement is None:
        return None
    if isinstance(placement, Format):
        placement = placement.sharding
    if isinstance(placement, NamedSharding):
        return placement.spec
    if isinstance(placement, tuple):
        return PartitionSpec(*placement)
    return None


def _context_mesh() -> Any:
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def _concrete_mesh() -> Mesh | None:
    mesh = jax.sharding.get_mesh()
    return None if mesh is None or mesh.empty else mesh


def _inside_a_trace() -> bool:
    """Whether a JAX trace is active (a constant made there is still placed by constraint)."""
    try:
        jax.sharding.get_mesh()
    except ValueError:  # jax refuses the concrete mesh inside jit
        return True
    return False


def _check_axis_types(mesh: Any) -> None:
    types = set(getattr(mesh, "axis_types", ()))
    if AxisType.Explicit in types and AxisType.Auto in types:
        raise ValueError(
            "Cannot shard a Variable on a mesh that mixes Explicit and Auto axes "
            f"({mesh.axis_types}): make all its axes Explicit or all Auto."
        )


def shard_value(value: Any, placement: Any, mesh: Mesh | None = None) -> Any:
    """Shard ``value`` as ``placement`` (from ``placement_of``) says, on ``mesh``, the
    placement's own mesh or the one set with ``jax.set_mesh``; with no mesh to use, the value
    is returned as it is (the names stay recorded in the metadata)."""
    if not hasattr(value, "shape"):
        return value
    tracing = isinstance(value, jax.core.Tracer) or _inside_a_trace()
    if isinstance(placement, Format):
        if tracing:
            return jax.lax.with_sharding_constraint(value, placement)
        return jax.device_put(value, placement)
    if isinstance(placement, jax.sharding.Sharding):
        _check_axis_types(getattr(placement, "mesh", None))
        if tracing:
            return jax.lax.with_sharding_constraint(value, placement)
        return jax.device_put(value, placement)
    names = tuple(placement)
    if len(names) > len(value.shape):
        raise ValueError(
            f"sharding {names} names {len(names)} dimensions but the value has shape "
            f"{tuple(value.shape)}"
        )
    names += (None,) * (len(value.shape) - len(names))  # trailing dimensions unsharded, as in jax
    spec = PartitionSpec(*names)
    if tracing:
        target = mesh if mesh is not None else _context_mesh()
        if target is None:
            return value
        _check_axis_types(target)
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
    _check_axis_types(target)
    return jax.device_put(value, NamedSharding(target, spec))
