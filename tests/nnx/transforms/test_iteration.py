import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 3, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.dropout(nnx.relu(self.bn(self.linear(x))))


def test_vmap_init_with_split_rngs_makes_distinct_layers():
    @nnx.split_rngs(splits=4)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return Block(rngs)

    stack = make(nnx.Rngs(0))
    assert stack.linear.kernel.shape == (4, 3, 3)
    assert stack.dropout.rngs.key.shape == (4,)
    k = np.asarray(stack.linear.kernel.value)
    assert not np.allclose(k[0], k[1])


def test_scan_over_layers_matches_loop_and_advances_state():
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return Block(rngs)

    stack = make(nnx.Rngs(0))
    stack.eval()
    x = jnp.ones((2, 3))

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def forward(block, x):
        return block(x)

    y = forward(stack, x)
    ref = x
    for i in range(3):
        k, b = stack.linear.kernel.value[i], stack.linear.bias.value[i]
        mean, var = stack.bn.mean.value[i], stack.bn.var.value[i]
        h = (ref @ k + b - mean) / jnp.sqrt(var + stack.bn.epsilon)
        ref = jax.nn.relu(h * stack.bn.scale.value[i] + stack.bn.bias.value[i])
    np.testing.assert_allclose(y, ref, rtol=1e-5)
    stack.train()
    forward(stack, x)
    assert np.all(np.asarray(stack.dropout.rngs.count.value) == 1)
    assert not np.allclose(stack.bn.mean.value, 0.0)  # BatchNorm updates stacked back


def test_scan_plain_function_like_lax_scan():
    def f(c, x):
        return c + x, c * x

    c, ys = nnx.scan(f, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(
        jnp.array(0.0), jnp.arange(4.0)
    )
    c_ref, ys_ref = jax.lax.scan(lambda c, x: (c + x, c * x), jnp.array(0.0), jnp.arange(4.0))
    assert float(c) == float(c_ref)
    np.testing.assert_allclose(ys, ys_ref)


def test_vmap_broadcast_model_and_stateaxes():
    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    xs = jnp.arange(12.0).reshape(4, 3)
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(m, xs)
    np.testing.assert_allclose(ys, xs @ m.kernel.value + m.bias.value, rtol=1e-6)
    axes = nnx.StateAxes({nnx.Param: None, ...: 0})
    ys2 = nnx.vmap(lambda m, x: m(x), in_axes=(axes, 0))(m, xs)
    np.testing.assert_allclose(ys2, ys, rtol=1e-6)


def test_vmap_new_state_under_stateaxes_takes_the_axis_its_filters_give():
    def f(m, x):
        m.extra = nnx.Param(x * 2)
        return x

    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    kernel = m.kernel[...]
    axes = nnx.StateAxes({nnx.PathContains("extra"): 0, ...: None})
    nnx.vmap(f, in_axes=(axes, 0))(m, jnp.arange(3.0))
    np.testing.assert_allclose(m.extra[...], [0.0, 2.0, 4.0])  # stacked along axis 0
    assert m.kernel[...] is kernel  # broadcast state unchanged

    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="batched"):  # a broadcast axis for batched state
        nnx.vmap(f, in_axes=(nnx.StateAxes({...: None}), 0))(m, jnp.ones(3))


def test_fori_and_while_loops_update_objects():
    counter = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    counter.bias.value = jnp.zeros((1,))

    def body(i, m):
        m.bias.value = m.bias.value + i
        return m

    out = nnx.fori_loop(0, 4, body, counter)
    assert out is counter and float(counter.bias.value[0]) == 6.0
    nnx.while_loop(lambda m: m.bias.value[0] < 10, lambda m: (body(1, m)), counter)
    assert float(counter.bias.value[0]) == 10.0


def test_cond_and_switch():
    m = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    m.bias.value = jnp.zeros((1,))

    def inc(m):
        m.bias.value += 1

    def dec(m):
        m.bias.value -= 1

    nnx.cond(jnp.array(True), inc, dec, m)
    nnx.switch(jnp.array(1), [inc, dec, inc], m)
    nnx.switch(jnp.array(2), [inc, dec, inc], m)
    assert float(m.bias.value[0]) == 1.0


def test_eval_shape_gives_abstract_model_without_allocation():
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    assert isinstance(abstract.kernel.value, jax.ShapeDtypeStruct)
    assert abstract.kernel.value.shape == (2, 3)


def test_pmap_traces_once_for_repeated_calls():
    traces = []

    class Scale(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.full((3,), 2.0))
            self.calls = nnx.BatchStat(jnp.zeros(()))

    @nnx.pmap(in_axes=(None, 0), out_axes=0)
    def forward(m, x):
        traces.append(1)
        return x * m.w[...]

    m = Scale()
    x = jnp.ones((jax.local_device_count(), 3))
    w_before = m.w[...]
    for _ in range(4):
        np.testing.assert_allclose(forward(m, x), 2.0 * x)
    assert len(traces) == 1
    assert m.w[...] is w_before  # an unchanged Variable keeps the caller's array


def test_vmap_keeps_the_callers_arrays_for_unchanged_leaves():
    class Two(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((3,)))
            self.seen = nnx.BatchStat(jnp.zeros(()))

    m = Two()
    w_before = m.w[...]

    def f(m, x):
        m.seen[...] += 1
        return x * m.w[...]

    nnx.vmap(f, in_axes=(None, 0), out_axes=0)(m, jnp.ones((2, 3)))
    assert m.w[...] is w_before
    assert float(m.seen[...]) == 1.0
