"""nnx.shard_map on a one-device mesh: traced once per signature, updates written back.

cond, switch and most of eval_shape are covered in test_iteration.py; several devices in
test_shardings.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def test_eval_shape_without_graph_updates_refuses_a_variable_in_two_arguments():
    v = nnx.Param(jnp.array(1.0))
    with pytest.raises(ValueError, match=r"Duplicate Param found at paths:\n  - args\[0\]\n  - args\[1\]"):
        nnx.eval_shape(lambda a, b: a[...] + b[...], v, v, graph=True, graph_updates=False)
    m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Duplicate Param"):
        nnx.eval_shape(lambda a, b: a(jnp.ones((1, 2))), m, m, graph=True, graph_updates=False)
    # with graph updates the two arguments are one object, as everywhere in graph mode
    out = nnx.eval_shape(lambda a, b: a[...] + b[...], v, v, graph=True, graph_updates=True)
    assert out.shape == ()
