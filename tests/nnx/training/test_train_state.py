import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx


class TrainState(nnx.TrainState):
    batch_stats: nnx.State


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x, train: bool):
        return self.bn(self.linear(x), use_running_average=not train)


def _state():
    graphdef, params, batch_stats = nnx.split(Net(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    return TrainState.create(graphdef, params=params, tx=optax.sgd(0.5), batch_stats=batch_stats)


def test_create_apply_and_apply_gradients_match_optax():
    state = _state()
    x = jnp.arange(4.0).reshape(2, 2)
    y, (graphdef, after) = state.apply("params", "batch_stats")(x, train=True)
    assert y.shape == (2, 3) and graphdef == state.graphdef
    assert not np.allclose(after["bn"]["mean"][...], state.batch_stats["bn"]["mean"][...])
    grads = jax.tree.map(jnp.ones_like, state.params)
    new = state.apply_gradients(grads)
    assert int(new.step) == 1 and int(state.step) == 0
    np.testing.assert_allclose(
        new.params["linear"]["kernel"][...], state.params["linear"]["kernel"][...] - 0.5
    )
    assert new.batch_stats is state.batch_stats


def test_is_a_pytree_with_static_graphdef_and_tx_through_jax_jit():
    state = _state()
    leaves = jax.tree.leaves(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)

    @jax.jit
    def step(state):
        return state.apply_gradients(jax.tree.map(jnp.zeros_like, state.params))

    new = step(state)
    assert type(new) is TrainState and int(new.step) == 1 and new.tx is state.tx


def test_method_calls_and_field_errors():
    state = _state()
    out, _ = state.apply("params", "batch_stats").linear(jnp.ones((1, 2)))
    assert out.shape == (1, 3)
    try:
        state.apply("step")
    except TypeError as e:
        assert "'step' is a" in str(e) and "expected a State" in str(e)
    else:
        raise AssertionError("apply('step') should raise")
