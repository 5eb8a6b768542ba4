"""Sharding with several (faked CPU) devices: nnx.jit in/out shardings, nnx.shard_map, nnx.pmap
and with_partitioning metadata. The checks run in one subprocess that sees 4 devices; each
compares against the same computation on one device."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nnx


def _mesh(types=jax.sharding.AxisType.Explicit):
    return jax.make_mesh((2, 2), ("data", "model"), axis_types=(types, types))


def _sharded_linear(rngs):
    return nnx.Linear(
        4, 6, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",)),
    )


def check_with_partitioning_shards_eagerly_and_in_jit():
    for types in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
        mesh = _mesh(types)
        with jax.set_mesh(mesh):
            layer = _sharded_linear(nnx.Rngs(0))
            assert layer.kernel[...].sharding.spec == P(None, "model"), layer.kernel[...].sharding
            created = nnx.jit(lambda: _sharded_linear(nnx.Rngs(0)))()
            assert created.kernel[...].sharding.spec == P(None, "model"), types
            np.testing.assert_allclose(created.kernel[...], layer.kernel[...], rtol=1e-5)
        specs = nnx.get_partition_spec(nnx.state(layer))
        assert specs["kernel"].get_value() == P(None, "model") and specs["bias"].get_value() == P("model")
        named = nnx.get_named_sharding(nnx.state(layer), mesh)
        assert named["kernel"].get_value() == NamedSharding(mesh, P(None, "model"))
    plain = _sharded_linear(nnx.Rngs(0))  # no mesh: names recorded, value left unsharded
    assert plain.kernel.out_sharding == (None, "model")
    assert len(plain.kernel[...].sharding.device_set) == 1


def check_jit_in_and_out_shardings():
    mesh = _mesh(jax.sharding.AxisType.Auto)
    model = _sharded_linear(nnx.Rngs(0))
    reference = nnx.clone(model)
    state_sharding = nnx.get_named_sharding(nnx.state(model), mesh)
    data = NamedSharding(mesh, P("data"))
    x = jnp.arange(32.0).reshape(8, 4) / 10

    @nnx.jit(in_shardings=(state_sharding, data), out_shardings=data)
    def step(m, x):
        m.kernel[...] = m.kernel[...] * 2
        return m(x)

    y = step(model, x)
    reference.kernel[...] = reference.kernel[...] * 2
    np.testing.assert_allclose(y, reference(x), rtol=1e-6)
    assert y.sharding.spec == P("data")
    assert model.kernel[...].sharding.spec == P(None, "model")  # updated state keeps its sharding

    by_filter = nnx.StateSharding({nnx.PathContains("kernel"): NamedSharding(mesh, P(None, "model")),
                                   ...: NamedSharding(mesh, P())})

    @nnx.jit(out_shardings=by_filter)
    def create():
        return nnx.Linear(4, 6, rngs=nnx.Rngs(1))

    made = create()
    assert made.kernel[...].sharding.spec == P(None, "model")
    assert made.bias[...].sharding.spec == P()
    np.testing.assert_allclose(made.kernel[...], nnx.Linear(4, 6, rngs=nnx.Rngs(1)).kernel[...], rtol=1e-5)


def check_shard_map_data_parallel_with_state_update():
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    class Model(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
            self.seen = nnx.BatchStat(jnp.zeros(()))

    model = Model()
    x = jnp.arange(24.0).reshape(8, 3) / 10

    @nnx.shard_map(mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    def forward(m, x):
        m.seen[...] += jax.lax.psum(x.shape[0], "data")
        return m.linear(x)

    y = forward(model, x)
    np.testing.assert_allclose(y, model.linear(x), rtol=1e-6)
    assert float(model.seen[...]) == 8.0

    @nnx.shard_map(mesh=mesh, in_specs=(nnx.StateSharding({...: P()}), P("data")), out_specs=P())
    def total(m, x):
        return jax.lax.psum(m.linear(x).sum(), "data")

    np.testing.assert_allclose(total(model, x), model.linear(x).sum(), rtol=1e-5)


def check_pmap_data_parallel_gradients():
    n = jax.local_device_count()
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    x = jnp.arange(n * 2 * 3.0).reshape(n, 2, 3) / 10
    y = jnp.ones((n, 2, 1))

    def loss(m, x, y):
        return jnp.mean((m(x) - y) ** 2)

    @nnx.pmap(in_axes=(None, 0, 0), out_axes=0, axis_name="d")
    def grads(m, x, y):
        return jax.lax.pmean(nnx.grad(loss)(m, x, y), "d")

    g = grads(model, x, y)
    expected = nnx.grad(loss)(model, x.reshape(-1, 3), y.reshape(-1, 1))
    for got, want in zip(jax.tree.leaves(g), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got[0], want, rtol=1e-5)
        np.testing.assert_allclose(got[-1], want, rtol=1e-5)

    @nnx.pmap(in_axes=(None, 0), out_axes=0)
    def forward(m, x):
        return m(x)

    np.testing.assert_allclose(forward(model, x), jax.vmap(model)(x), rtol=1e-6)


CHECKS = [name for name in list(globals()) if name.startswith("check_")]


@pytest.mark.skipif(sys.platform == "win32", reason="needs the XLA CPU device-count flag")
def test_on_four_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [f"ok:{name}" for name in CHECKS]


def test_state_sharding_picks_the_first_matching_filter():
    s = nnx.StateSharding({nnx.Param: "p", ...: "rest"})
    assert s.spec_for(("kernel",), nnx.Param(jnp.zeros(()))) == "p"
    assert s.spec_for(("mean",), nnx.BatchStat(jnp.zeros(()))) == "rest"


def test_mismatched_in_shardings_structure_is_an_error():
    f = nnx.jit(lambda pair: pair[0] + pair[1], in_shardings=((None, None, None),))
    with pytest.raises(ValueError, match="does not match the structure"):
        f((jnp.ones(2), jnp.ones(2)))


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    for name in CHECKS:
        globals()[name]()
        print(f"ok:{name}", flush=True)
