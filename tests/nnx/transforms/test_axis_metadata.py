"""nnx.transform_metadata and vmap/scan transform_metadata: out_sharding follows the mapped axis."""

import jax.numpy as jnp

import nnx


def test_decorator_takes_the_axis_out_for_the_call_and_adds_it_to_created_variables():
    calls = []

    class Tracked(nnx.Param):
        def add_axis(self, index, name):
            calls.append(("add", index, name))

        def remove_axis(self, index, name):
            calls.append(("remove", index, name))

    v = Tracked(jnp.array(0), out_sharding=("din", "dout"), eager_sharding=False)

    @nnx.transform_metadata(in_axes=0, out_axes=1, partition="din")
    def f(v):
        assert v.out_sharding == ("dout",)
        v[...] += 1
        return nnx.Param(jnp.array(10), out_sharding=("dmid", "dout"), eager_sharding=False)

    new = f(v)
    assert v.out_sharding == ("din", "dout") and int(v[...]) == 1
    assert new.out_sharding == ("dmid", "din", "dout")
    assert calls == [("remove", 0, "din"), ("add", 0, "din")]


def test_vmap_adds_the_partition_name_to_stacked_parameters():
    @nnx.vmap(in_axes=None, axis_size=3, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs):
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("din", "dout"))
        return nnx.Linear(2, 4, kernel_init=init, rngs=rngs)

    m = create(nnx.Rngs(0))
    assert m.kernel.shape == (3, 2, 4)
    assert m.kernel.out_sharding == ("layers", "din", "dout")
