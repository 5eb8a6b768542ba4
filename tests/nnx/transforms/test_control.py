"""nnx.shard_map on a one-device mesh: traced once per signature, updates written back.

cond, switch and eval_shape are covered in test_iteration.py; several devices in
test_shardings.py."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import nnx


def test_shard_map_traces_once_for_repeated_calls_and_writes_updates_back():
    traces = []
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    class Model(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(3.0))
            self.calls = nnx.BatchStat(jnp.zeros(()))

    @nnx.shard_map(mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    def forward(m, x):
        traces.append(1)
        m.calls[...] += 1
        return x @ m.w[...]

    m = Model()
    x = jnp.ones((4, 3))
    np.testing.assert_allclose(forward(m, x), jnp.full((4,), 3.0))
    w_on_mesh = m.w[...]
    assert w_on_mesh.sharding == jax.sharding.NamedSharding(mesh, P())
    for _ in range(2):
        np.testing.assert_allclose(forward(m, x), jnp.full((4,), 3.0))
    assert len(traces) == 1
    assert float(m.calls[...]) == 3.0
    assert m.w[...] is w_on_mesh  # placed once; unchanged afterwards
