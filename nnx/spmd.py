"""Sharding metadata: name the mesh axes each Variable's dimensions are split over.

``with_partitioning(init, ("data", "model"))`` makes an initializer whose Variables carry an
``out_sharding`` entry. When a mesh is known (passed as ``mesh=``, set with ``jax.set_mesh``,
or brought by a ``NamedSharding``), the value is sharded as it is created: placed with
``jax.device_put`` outside a trace, constrained inside one (``jax.sharding.reshard`` for
Explicit mesh axes, ``jax.lax.with_sharding_constraint`` for Auto ones). With no mesh the
names are only recorded. Logical names are renamed to mesh axes by ``logical_axis_rules``
and the Variable's ``sharding_rules``. ``get_partition_spec`` and ``get_named_sharding`` turn
that metadata into ``PartitionSpec`` / ``NamedSharding`` trees shaped like a State, for
``jax.jit`` or ``nnx.jit`` shardings; ``as_abstract`` and ``get_abstract_model`` give the
abstract (``ShapeDtypeStruct``) state of a model with its shardings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nnx._placement import logical_axis_rules, spec_of
from nnx.variablelib import Variable, VariableMetadata, with_metadata

A = TypeVar("A")
PARTITION_NAME = "partition_name"  # the transform_metadata key naming a new mesh axis


def sharding_names(variable: Variable) -> tuple | None:
    """The mesh axis names recorded on ``variable`` (None when it has none)."""
    spec = spec_of(variable._metadata)
    return None if spec is None else tuple(spec)


def with_partitioning(
    initializer: Callable[..., Any],
    sharding: Sequence[str | None] | PartitionSpec | NamedSharding,
    mesh: Mesh | None = None,
    **metadata: Any,
) -> Callable[..., VariableMetadata]:
    """Wrap ``initializer`` so the Variable built from it is sharded over ``sharding``'s axes.

    Args:
      initializer: e.g. ``nnx.initializers.lecun_normal()``.
      sharding: one mesh (or logical) axis name or None per dimension of the created value,
        or a ``PartitionSpec`` / ``NamedSharding``.
      mesh: the mesh to shard on; default: the one set with ``jax.set_mesh``, if any.
      **metadata: further metadata for the Variable (e.g. ``sharding_rules``).
    """
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = tuple(sharding)
    extra = {"mesh": mesh} if mesh is not None else {}
    return with_metadata(initializer, out_sharding=sharding, **extra, **metadata)


def _map_variables(tree: Any, fn: Callable[[Any], Any]) -> Any:
    def leaf(x: Any) -> Any:
        if isinstance(x, Variable):
            return x.copy(fn(x))
        return fn(x)

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, Variable))


def get_var_pspec(variable: Variable) -> PartitionSpec:
    """The ``PartitionSpec`` of ``variable`` (``PartitionSpec()``, replicated, without
    sharding metadata), logical axis rules applied."""
    spec = spec_of(variable._metadata)
    return PartitionSpec() if spec is None else spec


def get_partition_spec(tree: Any) -> Any:
    """``tree`` (a State, Module or pytree) with each value replaced by its ``PartitionSpec``
    (``PartitionSpec()`` for values without sharding metadata); Variables stay Variables."""
    return _map_variables(
        tree, lambda x: get_var_pspec(x) if isinstance(x, Variable) else PartitionSpec()
    )


def get_named_sharding(tree: Any, mesh: Mesh) -> Any:
    """Like ``get_partition_spec`` but with ``NamedSharding(mesh, spec)`` values."""
    specs = get_partition_spec(tree)
    return _map_variables(specs, lambda s: NamedSharding(mesh, s.get_value() if isinstance(s, Variable) else s))


def as_abstract(tree: A, graph: bool | None = None) -> A:
    """``tree`` with each abstract Variable (a ``ShapeDtypeStruct`` value, from
    ``nnx.eval_shape``) that has sharding metadata but no sharding given a ``NamedSharding``
    on its ``mesh`` metadata or the mesh set with ``jax.set_mesh`` (left as is without one).

    Args:
      tree: the abstract model (or State).
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    from nnx._walks import map as map_graph

    def add_sharding(path: tuple, x: Any) -> Any:
        if not isinstance(x, Variable):
            return x
        value, spec = x.get_raw_value(), spec_of(x._metadata)
        if spec is None or not hasattr(value, "shape") or not hasattr(value, "dtype"):
            return x
        if getattr(value, "sharding", None) is not None:
            return x
        mesh = x._metadata.get("mesh") or jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            return x  # no mesh known: nothing to attach
        abstract = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=NamedSharding(mesh, spec))
        return x.copy(abstract)

    return map_graph(add_sharding, tree, graph=graph)


abstract_with_sharding = as_abstract


# -- a transform adding or removing a mapped axis (vmap / scan ``transform_metadata``) --------


def _axis_metadata(transform_metadata: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    if PARTITION_NAME not in transform_metadata:
        raise ValueError(
            f"transform_metadata needs a {PARTITION_NAME!r} entry naming the mapped axis, got "
            f"{dict(transform_metadata)!r}."
        )
    other = dict(transform_metadata)
    return other.pop(PARTITION_NAME), other


def _on_variables(tree: Any, fn: Callable[[Variable], None]) -> Any:
    for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Variable)):
        if isinstance(x, Variable):
            fn(x)
    return tree


def add_axis(tree: A, index: int, transform_metadata: Mapping[str, Any]) -> A:
    """Record a new axis at ``index`` of every Variable of ``tree``, in place: the axis name
    (``transform_metadata[PARTITION_NAME]``) goes into ``out_sharding``, each other entry into
    the tuple metadata of its name; a Variable's own ``add_axis(index, name)`` is then called.
    """
    name, other = _axis_metadata(transform_metadata)

    def insert(fields: Any, value: Any) -> tuple:
        fields = list(fields)
        fields += [None] * (index - len(fields))
        fields.insert(index, value)
        return tuple(fields)

    def add(x: Variable) -> None:
        if x.get_metadata("out_sharding", None):
            x.set_metadata(out_sharding=insert(x.get_metadata("out_sharding"), name))
        for key, value in other.items():
            if isinstance(current := x.get_metadata(key, None), tuple) and current:
                x.set_metadata(key, insert(current, value))
        hook = getattr(x, "add_axis", None)
        if callable(hook):
            hook(index, name)

    return _on_variables(tree, add)


def remove_axis(tree: A, index: int, transform_metadata: Mapping[str, Any]) -> A:
    """Undo ``add_axis``: drop the entry at ``index`` of ``out_sharding`` (and of the other
    named metadata), which must be the transform's; then call the Variable's ``remove_axis``."""
    name, other = _axis_metadata(transform_metadata)

    def drop(key: str, fields: Any, value: Any) -> tuple:
        fields = list(fields)
        removed = fields.pop(index)
        if removed != value:
            raise ValueError(
                f"remove_axis: expected {value!r} at index {index} of the {key} metadata "
                f"{tuple(fields[:index]) + (removed,) + tuple(fields[index:])!r}, found {removed!r}."
            )
        return tuple(fields)

    def remove(x: Variable) -> None:
        if x.get_metadata("out_sharding", None):
            x.set_metadata(out_sharding=drop("out_sharding", x.get_metadata("out_sharding"), name))
        for key, value in other.items():
            if isinstance(current := x.get_metadata(key, None), tuple) and current:
                x.set_metadata(key, drop(key, current, value))
        hook = getattr(x, "remove_axis", None)
        if callable(hook):
            hook(index, name)

    return _on_variables(tree, remove)


def get_abstract_model(
    init_fn: Callable[[], Any], mesh: Mesh, *, graph: bool | None = None
) -> tuple[Any, Any]:
    """The GraphDef and abstract State of the model ``init_fn()`` builds on ``mesh``, without
    computing it: each leaf a ``ShapeDtypeStruct`` with the ``NamedSharding`` its metadata
    asks for (e.g. to restore a checkpoint straight into sharded arrays).

    Args:
      init_fn: builds the model (called under ``nnx.eval_shape``).
      mesh: the mesh to shard on.
      graph: graph mode (True) or tree mode (False); None: the current setting.
    """
    from nnx.graph import split
    from nnx.transforms import eval_shape

    with jax.set_mesh(mesh):
        graphdef, state = split(eval_shape(init_fn), graph=graph)
        shardings = get_named_sharding(state, mesh)
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
        )
    return graphdef, state


__all__ = [
    "PARTITION_NAME", "abstract_with_sharding", "add_axis", "as_abstract", "get_abstract_model",
    "get_named_sharding", "get_partition_spec", "get_var_pspec", "logical_axis_rules",
    "remove_axis", "with_partitioning",
]
