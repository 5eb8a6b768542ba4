"""split_inputs / merge_inputs: JAX transforms lifted by hand (nnx/transforms/general.py)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import nnx
from nnx.transforms import general


class Counted(nnx.Module):
    def __init__(self):
        self.linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        self.calls = nnx.BatchStat(jnp.array(0, jnp.int32))

    def __call__(self, x):
        self.calls[...] += 1
        return self.linear(x)


def test_jax_jit_lifted_writes_state_back_and_returns_the_output():
    model = Counted()

    @general.split_inputs
    @jax.jit
    @general.merge_inputs
    def forward(model, x):
        y = model(x)
        model.linear.kernel[...] *= 0
        return y

    x = jnp.ones((4, 2))
    want = model.linear(x)
    np.testing.assert_allclose(forward(model, x), want, rtol=1e-6)
    assert int(model.calls[...]) == 1 and float(jnp.abs(model.linear.kernel[...]).sum()) == 0.0


def test_jax_lax_cond_lifted_runs_one_branch_on_the_object():
    model = Counted()
    bump = general.merge_inputs(lambda m, x: m(x))
    skip = general.merge_inputs(lambda m, x: jnp.zeros((x.shape[0], 3)))
    x = jnp.ones((1, 2))
    general.split_inputs(jax.lax.cond)(True, bump, skip, model, x)
    out = general.split_inputs(jax.lax.cond)(False, bump, skip, model, x)
    assert int(model.calls[...]) == 1 and out.shape == (1, 3)


def test_jax_vmap_lifted_with_the_inputs_in_out_axes_and_a_nested_cond():
    class Env(nnx.Pytree):
        def __init__(self):
            self.index = nnx.BatchStat(jnp.arange(6))
            self.steps = nnx.BatchStat(jnp.zeros((6,), jnp.int32))

    env, model = Env(), Counted()
    in_axes = (0, None)

    @general.split_inputs
    @partial(jax.vmap, in_axes=in_axes, out_axes=(in_axes, None))
    @general.merge_inputs
    def step(env, model):
        assert env.index.shape == ()
        @general.merge_inputs
        def inc(e):
            e.steps[...] += 1

        general.split_inputs(jax.lax.cond)(env.index % 3 == 0, inc, general.merge_inputs(lambda e: None), env)

    step(env, model)
    np.testing.assert_array_equal(env.steps[...], [1, 0, 0, 1, 0, 0])


def test_ctxtag_can_be_given_to_both_decorators():
    model = Counted()
    forward = general.split_inputs(ctxtag="mine")(jax.jit(general.merge_inputs(ctxtag="mine")(lambda m, x: m(x))))
    forward(model, jnp.ones((1, 2)))
    assert int(model.calls[...]) == 1
