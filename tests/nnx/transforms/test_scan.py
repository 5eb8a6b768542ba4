"""nnx.scan: carry identity, broadcast state per mode, stacked outputs, one trace per signature."""

import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Counter(nnx.Module):
    def __init__(self):
        self.n = nnx.BatchStat(jnp.array(0.0))


def test_the_returned_carry_must_be_the_carried_objects():
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def new_reference(c, x):
        return Counter(), x

    with pytest.raises(ValueError, match="Carry references must be the same"):
        new_reference(Counter(), jnp.arange(3.0))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph_updates=False)
    def new_variable(v, x):
        return nnx.Variable(v[...] + 1), x

    with pytest.raises(ValueError, match="identity must be preserved"):
        new_variable(nnx.Variable(jnp.array(0.0)), jnp.arange(3.0))


def test_axes_configuration_errors_are_raised_when_scan_is_applied():
    with pytest.raises(ValueError, match="Found multiple Carry definitions"):
        nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, nnx.Carry))
    with pytest.raises(ValueError, match="the other must also have Carry"):
        nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, 0), out_axes=0)
    with pytest.raises(ValueError, match="Cannot broadcast output state"):
        nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, None))


@pytest.mark.parametrize("graph_updates", [True, False])
def test_broadcast_state_is_constant_with_graph_updates_and_carried_without(graph_updates):
    counter = Counter()

    @nnx.scan(in_axes=(None, 0), out_axes=0, graph_updates=graph_updates)
    def step(c, x):
        c.n[...] += 1
        return c.n[...] + x

    ys = step(counter, jnp.zeros(4))
    if graph_updates:  # every step sees the value it came in with; the updates are dropped
        np.testing.assert_allclose(ys, [1.0, 1.0, 1.0, 1.0])
        assert float(counter.n[...]) == 0.0
    else:  # carried from step to step and written back
        np.testing.assert_allclose(ys, [1.0, 2.0, 3.0, 4.0])
        assert float(counter.n[...]) == 4.0


def test_modules_created_inside_come_out_stacked_and_scanned_state_is_stacked_back():
    @nnx.split_rngs(splits=3)
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), length=3)
    def make(_, rngs):
        return None, nnx.Linear(2, 2, rngs=rngs)

    _, stack = make(None, nnx.Rngs(0))
    assert stack.kernel.shape == (3, 2, 2)
    k = np.asarray(stack.kernel[...])
    assert not np.allclose(k[0], k[1])

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, layer):
        return layer(x)

    x = jnp.ones((1, 2))
    want = x
    for i in range(3):
        want = want @ k[i] + np.asarray(stack.bias[...])[i]
    np.testing.assert_allclose(forward(x, stack), want, rtol=1e-5)


def test_repeated_calls_trace_once():
    traces = []

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def f(c, x):
        traces.append(1)
        return c + x, c * x

    c, ys = f(jnp.zeros(()), jnp.arange(4.0))
    c, ys = f(c, jnp.arange(4.0))
    assert len(traces) == 1 and float(c) == 12.0
    np.testing.assert_allclose(ys, jnp.arange(4.0) * jnp.array([6.0, 6.0, 7.0, 9.0]))


def test_stateaxes_carry_for_some_state_and_pytree_prefix_for_plain_arguments():
    rngs = nnx.Rngs(params=0, dropout=1)
    counter = Counter()
    axes = nnx.StateAxes({nnx.BatchStat: nnx.Carry, ...: None})

    @nnx.scan(in_axes=(axes, {"a": 0, "b": None}), out_axes=0)
    def f(c, xs):
        c.n[...] += xs["a"]
        return c.n[...] * xs["b"]

    ys = f(counter, {"a": jnp.arange(3.0), "b": jnp.array(2.0)})
    np.testing.assert_allclose(ys, [0.0, 2.0, 6.0])
    assert float(counter.n[...]) == 3.0
    del rngs


@pytest.mark.parametrize("graph", [True, False])
def test_functional_scan_carries_replaced_array_attributes(graph):
    """Without graph updates an attribute the step replaces (``state.data = ...``) is still the
    carry: the result is a new object with the final value, its Variables the caller's."""

    class Carry(nnx.Pytree):
        def __init__(self):
            self.data = jnp.array(0.0)
            self.count = nnx.BatchStat(jnp.array(0))

    def step(model, state, x):
        state.data = state.data * 2 + x
        state.count[...] += 1
        return state, model(jnp.ones((1, 2)))[0, 0] + x

    model, state = nnx.Linear(2, 1, rngs=nnx.Rngs(0)), Carry()
    xs = jnp.arange(4.0)
    out, ys = nnx.scan(
        step, in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=graph, graph_updates=False
    )(model, state, xs)
    want = 0.0
    for x in range(4):
        want = want * 2 + x
    assert float(out.data) == want and float(state.data) == 0.0  # the caller's object unchanged
    assert out.count is state.count and int(state.count[...]) == 4
    np.testing.assert_allclose(ys, model(jnp.ones((1, 2)))[0, 0] + xs, rtol=1e-6)
