"""Sharding metadata without a mesh (the multi-device behaviour is in
tests/nnx/transforms/test_shardings.py)."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import nnx


def test_partition_specs_from_metadata():
    layer = nnx.Linear(
        3, 4, rngs=nnx.Rngs(0),
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("data", "model")),
    )
    assert layer.kernel.out_sharding == ("data", "model")
    specs = nnx.get_partition_spec(nnx.state(layer))
    assert specs["kernel"].get_value() == P("data", "model")
    assert specs["bias"].get_value() == P()  # no metadata: replicated
    assert isinstance(specs["kernel"], nnx.Param)
    # Older spellings of the metadata are read too.
    legacy = nnx.Param(jnp.zeros((2,)), sharding_names=("model",))
    assert nnx.get_partition_spec(legacy).get_value() == P("model")


def test_names_may_cover_leading_dimensions_only_but_not_more_than_the_rank():
    mesh = _mesh()
    with jax.set_mesh(mesh):
        init = nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",))
        p = nnx.Param(init(None, (2, 3)))  # trailing dimension unsharded, as jax reads it
        assert p[...].sharding.spec == P("model", None)
        init = nnx.with_partitioning(nnx.initializers.zeros_init(), ("model", None, None))
        with pytest.raises(ValueError, match="names 3 dimensions but the value has shape"):
            nnx.Param(init(None, (2, 3)))


def _mesh():
    return jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))


def test_named_sharding_metadata_is_applied_with_its_mesh():
    mesh = _mesh()
    sharding = NamedSharding(mesh, P(None, "model"))
    v = nnx.Param(jnp.ones((2, 4)), out_sharding=sharding)
    assert v.get_value().sharding == sharding
    assert nnx.get_partition_spec(v).get_value() == P(None, "model")


def test_logical_axis_rules_rename_axes():
    mesh = _mesh()
    with jax.set_mesh(mesh), nnx.logical_axis_rules((("embed", "model"),)):
        v = nnx.Param(jnp.ones((4,)), out_sharding=("embed",))
        w = nnx.Param(jnp.ones((4,)), out_sharding=("hidden",), sharding_rules=(("hidden", "model"),))
        assert nnx.get_partition_spec(v).get_value() == P("model")
    assert v.get_value().sharding.spec == P("model") and w.get_value().sharding.spec == P("model")
    assert v.out_sharding == ("embed",)  # the metadata keeps the logical name
    with nnx.logical_axis_rules((("hidden", "other"),)):
        with pytest.raises(ValueError, match="Inconsistent logical axis rules for 'hidden'"):
            nnx.get_partition_spec(w)


def test_mixed_axis_types_raise():
    mesh = jax.make_mesh((1, 1), ("a", "b"), axis_types=(AxisType.Auto, AxisType.Explicit))
    with pytest.raises(ValueError, match="mixes Explicit and Auto axes"):
        nnx.Param(jnp.ones((2, 2)), out_sharding=("a", "b"), mesh=mesh)


def test_as_abstract_and_get_abstract_model_attach_shardings():
    mesh = _mesh()

    def make():
        return nnx.Linear(2, 4, rngs=nnx.Rngs(0), kernel_metadata={"out_sharding": (None, "model")})

    abstract = nnx.as_abstract(nnx.eval_shape(make))
    assert abstract.kernel.get_value().sharding is None  # no mesh known: nothing to attach
    with jax.set_mesh(mesh):
        abstract = nnx.as_abstract(nnx.eval_shape(make))
    assert abstract.kernel.get_value().sharding.spec == P(None, "model")
    assert getattr(abstract.bias.get_value(), "sharding", None) is None
    graphdef, state = nnx.get_abstract_model(make, mesh)
    assert state["kernel"].get_value().sharding == NamedSharding(mesh, P(None, "model"))
    assert nnx.PARTITION_NAME == "partition_name"


def test_add_and_remove_axis_update_sharding_metadata():
    v = nnx.Param(jnp.ones((2,)), out_sharding=("dout",), nickname=("out",), eager_sharding=False)
    meta = {nnx.PARTITION_NAME: "layers", "nickname": "nick"}
    nnx.spmd.add_axis({"v": v}, 0, meta)
    assert v.out_sharding == ("layers", "dout") and v.nickname == ("nick", "out")
    nnx.spmd.remove_axis([v], 0, meta)
    assert v.out_sharding == ("dout",) and v.nickname == ("out",)
    with pytest.raises(ValueError, match="expected 'layers' at index 0"):
        nnx.spmd.remove_axis([v], 0, meta)
    with pytest.raises(ValueError, match="needs a 'partition_name' entry"):
        nnx.spmd.add_axis([v], 0, {})
