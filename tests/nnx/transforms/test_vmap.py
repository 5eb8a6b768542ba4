"""nnx.vmap / nnx.pmap: axes from any prefix, stacked creation, aliasing checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Two(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)


def test_out_axes_from_a_state_of_axes_place_each_created_leaf():
    state = nnx.state(Two(nnx.Rngs(0)))
    for path, _ in state.flat_state():
        state[path[0]][path[1]] = 1 if path[-1] in ("bias", "mean") else 0
    axes = nnx.StateAxes(state)
    assert axes.map_prefix(("linear", "bias"), None) == 1

    @nnx.vmap(out_axes=axes, axis_size=4)
    def create():
        return Two(nnx.Rngs(0))

    m = create()
    assert m.linear.kernel.shape == (4, 2, 3) and m.linear.bias.shape == (3, 4)
    assert m.bn.mean.shape == (3, 4) and m.bn.var.shape == (4, 3)


@pytest.mark.parametrize("graph", [True, False])
def test_a_prefix_from_nnx_prefix_maps_the_chosen_state(graph):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    model.kernel[...] = jnp.stack([jnp.ones(3), 2 * jnp.ones(3)])  # (2, 3): rows mapped
    axes = nnx.prefix(model, {nnx.PathContains("kernel"): 0, ...: None}, graph=graph)

    @nnx.vmap(in_axes=(axes, 0), out_axes=0, graph=graph, graph_updates=False)
    def f(m, x):
        return x * m.kernel[...] + m.bias[...]

    out = f(model, jnp.array([1.0, 10.0]))
    np.testing.assert_allclose(out, [np.ones(3), 20 * np.ones(3)])


def test_the_same_variable_with_two_axes_is_inconsistent_aliasing():
    class Holder(nnx.Module):
        def __init__(self, shared):
            self.a = shared

    shared = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Inconsistent aliasing detected[\s\S]*args\[0\]/a/\w+: 0[\s\S]*args\[1\]/a/\w+: 1"):
        nnx.vmap(lambda a, b: None, in_axes=(0, 1))(Holder(shared), Holder(shared))
    v = nnx.Param(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="Duplicate Param"):
        nnx.vmap(lambda a, b: None, in_axes=(0, 1), graph=False)(v, v)


def test_keyword_arguments_bind_to_their_positions():
    @nnx.vmap(in_axes=(0, None))
    def f(x, scale):
        return x * scale

    np.testing.assert_allclose(f(jnp.arange(3.0), scale=2.0), [0.0, 2.0, 4.0])


def test_pmap_applies_out_axes_after_one_trace():
    traces = []
    n = jax.local_device_count()

    @nnx.pmap(in_axes=0, out_axes=(0, None))
    def f(x):
        traces.append(1)
        return x * 2, jnp.sum(jnp.zeros(3))

    for _ in range(2):
        y, z = f(jnp.ones((n, 3)))
    assert len(traces) == 1 and y.shape == (n, 3) and z.shape == ()


def test_a_broadcast_variable_given_a_batched_value_is_named_in_the_error():
    class Broadcast(nnx.Variable):
        pass

    class Env(nnx.Module):
        def __init__(self):
            self.total = Broadcast(jnp.array(0.0))
            self.xs = nnx.Param(jnp.arange(4.0))

    @nnx.vmap(in_axes=(nnx.StateAxes({Broadcast: None, nnx.Param: 0}),))
    def f(env):
        env.total[...] += env.xs[...]

    with pytest.raises(ValueError, match=r"at vmap, the Broadcast 'total' of args\[0\] came in without a batch axis"
                       r"(.|\n)*got axis spec None but output was batched on axis 0"):
        f(Env())
