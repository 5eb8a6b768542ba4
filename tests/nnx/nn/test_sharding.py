"""Layers on sharded inputs (faked CPU devices, an explicit 2x2 mesh): ``out_sharding=`` of the
contractions and Dropout keeping its input's sharding. The checks run in one subprocess that
sees 4 devices; each also compares the values with the unsharded computation."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from jax.sharding import reshard

import nnx


def _mesh():
    types = (jax.sharding.AxisType.Explicit,) * 2
    return jax.make_mesh((2, 2), ("X", "Y"), axis_types=types)


def check_contractions_take_out_sharding():
    x = jnp.arange(8.0).reshape(2, 4)
    layers = [
        nnx.Linear(4, 4, rngs=nnx.Rngs(0)),
        nnx.LinearGeneral(4, 4, rngs=nnx.Rngs(0)),
        nnx.Einsum("ab,bc->ac", (4, 4), (4,), rngs=nnx.Rngs(0)),
    ]
    with jax.set_mesh(_mesh()):
        sharded = reshard(x, P("X", None))
        for layer in layers:
            y = layer(sharded, out_sharding=P("X", "Y"))
            assert "float32[2@X,4@Y]" in str(jax.typeof(y)), jax.typeof(y)
            np.testing.assert_allclose(y, layer(x), rtol=1e-6)
        embed = nnx.Embed(6, 4, rngs=nnx.Rngs(0))
        ids = reshard(jnp.array([1, 5]), P("X"))
        assert "float32[2@X,4]" in str(jax.typeof(embed(ids, out_sharding=P("X", None))))


def check_dropout_keeps_the_input_sharding():
    x = jnp.ones((2, 4))
    with jax.set_mesh(_mesh()):
        for spec, broadcast_dims in [(P("X", None), ()), (P("X", None), (1,)), (P(None, "Y"), (1,))]:
            sharded = reshard(x, spec)
            y = nnx.Dropout(0.5, broadcast_dims=broadcast_dims, rngs=nnx.Rngs(0))(sharded)
            assert jax.typeof(y).sharding.spec == spec, (spec, jax.typeof(y))
            plain = nnx.Dropout(0.5, broadcast_dims=broadcast_dims, rngs=nnx.Rngs(0))(x)
            np.testing.assert_array_equal(y, plain)
            if broadcast_dims:
                values = np.asarray(y)
                np.testing.assert_array_equal(values, np.broadcast_to(values[:, :1], (2, 4)))


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


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    for name in CHECKS:
        globals()[name]()
        print(f"ok:{name}", flush=True)
