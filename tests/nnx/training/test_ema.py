import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(2, 2, rngs=rngs)
        self.bn = nnx.BatchNorm(2, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.steps = nnx.Variable(jnp.array(0))

    def __call__(self, x):
        return self.drop(self.bn(self.linear(x)))


def test_update_is_a_moving_average_of_float_values_only():
    model = Net(nnx.Rngs(0))
    k0 = np.asarray(model.linear.kernel[...])
    ema = nnx.EMA(model, decay=0.9)
    assert ema.params["linear"]["kernel"] is not model.linear.kernel
    model.linear.kernel[...] = model.linear.kernel[...] * 2.0
    model.steps[...] = jnp.array(5)
    model.drop.rngs()  # advances the stream's counter
    ema.update(model)
    np.testing.assert_allclose(ema.params["linear"]["kernel"][...], 0.9 * k0 + 0.1 * 2 * k0, rtol=1e-6)
    assert int(ema.params["steps"][...]) == 5  # an integer counter follows the model
    assert int(ema.params["drop"]["rngs"]["count"][...]) == int(model.drop.rngs.count[...])


def test_only_filter_and_apply_to_shares_the_ema_variables():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.5, only=nnx.Param)
    assert ema.filter is nnx.Param
    assert {p[-1] for p, _ in ema.params.flat_state()} == {"kernel", "bias", "scale"}
    ema_model = ema.apply_to(model)
    assert ema_model.linear.kernel is ema.params["linear"]["kernel"]
    assert ema_model.bn.mean is model.bn.mean  # untracked state is the model's
    b0 = np.asarray(model.linear.bias[...])
    model.linear.bias[...] = model.linear.bias[...] + 1.0
    ema.update(model)
    np.testing.assert_allclose(ema_model.linear.bias[...], b0 + 0.5, rtol=1e-6)


def test_update_inside_nnx_jit_with_the_optimizer():
    x, y = jnp.ones((3, 2)), jnp.zeros((3, 2))
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    ema = nnx.EMA(model, decay=0.9)
    k0 = np.asarray(model.kernel[...])

    @nnx.jit
    def step(model, optimizer, ema):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        ema.update(model)

    step(model, optimizer, ema)
    np.testing.assert_allclose(
        ema.params["kernel"][...], 0.9 * k0 + 0.1 * np.asarray(model.kernel[...]), rtol=1e-6
    )


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        nnx.EMA(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), decay=1.5)

    class Raw(nnx.Module):
        def __init__(self):
            self.w = jnp.ones(2)

    with pytest.raises(TypeError, match="EMA tracks Variables only, got a .* at 'w'"):
        nnx.EMA(Raw(), decay=0.9)
    ema = nnx.EMA(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), decay=0.9)
    with pytest.raises(KeyError, match="no Variable at 'bias'"):
        ema.update(nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0)))
    assert jax.tree.leaves(nnx.state(ema))  # the averages are the EMA's state
