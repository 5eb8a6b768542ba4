import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx


class Count(nnx.Variable):
    pass


class Affine(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))
        self.calls = Count(jnp.array(0))

    def __call__(self, x):
        return x @ self.w + self.b


def _loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _grads_of(model, x, y):
    params = nnx.state(model, nnx.Param).to_pure_dict()
    return jax.grad(_loss)(params, x, y)


def _data():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)), jnp.float32)
    return x, y


def _reference_loop(tx, params, x, y, steps, **kwargs):
    opt_state = tx.init(params)
    for _ in range(steps):
        g = jax.grad(_loss)(params, x, y)
        updates, opt_state = tx.update(g, opt_state, params, **kwargs)
        params = optax.apply_updates(params, updates)
    return params, opt_state


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optax.adam(0.05),
        lambda: optax.sgd(optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)),
        lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=0.03, weight_decay=0.1),
    ],
    ids=["adam", "sgd_schedule", "inject_hyperparams"],
)
def test_optimizer_matches_handwritten_optax_loop(make_tx):
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    start = nnx.state(model, nnx.Param).to_pure_dict()
    w_var = model.w
    optimizer = nnx.Optimizer(model, make_tx())
    for _ in range(3):
        optimizer.update(_grads_of(model, x, y))
    expected, _ = _reference_loop(make_tx(), start, x, y, 3)
    np.testing.assert_allclose(model.w.value, expected["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.b.value, expected["b"], rtol=1e-5, atol=1e-6)
    assert model.w is w_var
    assert int(optimizer.step.value) == 3
    assert optimizer.step.value.dtype == jnp.uint32


def test_opt_state_leaves_are_optstate_and_carry_param_metadata():
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    model.w.set_metadata(sharding=("in", "out"))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))
    leaves = jax.tree.leaves(optimizer.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert leaves and all(isinstance(v, nnx.OptState) for v in leaves)
    mu = optimizer.opt_state[0].mu
    assert mu["w"].sharding == ("in", "out")
    assert mu["w"].shape == (3, 2)
    opt_state = nnx.state(optimizer, nnx.OptState)
    assert "opt_state" in opt_state and "step" in opt_state


def test_update_with_model_argument_and_state_grads():
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    start = nnx.state(model, nnx.Param).to_pure_dict()
    grads = nnx.State(jax.tree.map(nnx.Param, _grads_of(model, x, y)))
    optimizer.update(model, grads)
    g = jax.grad(_loss)(start, x, y)
    np.testing.assert_allclose(model.w.value, start["w"] - 0.1 * g["w"], rtol=1e-6)
    assert optimizer.model is model


def test_update_with_another_model_raises():
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    other = Affine(3, 2, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    with pytest.raises(ValueError, match="not the model this optimizer was created with"):
        optimizer.update(other, _grads_of(other, *_data()))


def test_missing_grad_names_the_path():
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    with pytest.raises(KeyError, match="'b'"):
        optimizer.update({"w": jnp.zeros((3, 2))})


class LoRAAffine(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 2)))
        self.lora_a = nnx.LoRAParam(jax.random.normal(rngs.params(), (3, 1)))
        self.lora_b = nnx.LoRAParam(jnp.zeros((1, 2)))

    def __call__(self, x):
        return x @ self.w + x @ self.lora_a @ self.lora_b


def test_wrt_lora_param_leaves_other_params_untouched():
    x, y = _data()
    model = LoRAAffine(rngs=nnx.Rngs(0))
    w_before = np.asarray(model.w.value)
    b_before = np.asarray(model.lora_b.value)
    optimizer = nnx.Optimizer(model, optax.sgd(0.5, momentum=0.9), wrt=nnx.LoRAParam)
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)

    def loss(lora):
        m = nnx.merge(graphdef, lora, rest)
        return jnp.mean((m(x) - y) ** 2)

    grads = jax.grad(loss)(lora)
    optimizer.update(grads)
    np.testing.assert_array_equal(model.w.value, w_before)
    assert not np.allclose(model.lora_b.value, b_before)
    assert set(optimizer.opt_state[0].trace) == {"lora_a", "lora_b"}


def test_kwargs_reach_tx_update_reduce_on_plateau():
    x, y = _data()
    tx = optax.chain(
        optax.sgd(0.1),
        optax.contrib.reduce_on_plateau(factor=0.5, patience=0, cooldown=0, accumulation_size=1),
    )
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx)
    optimizer.update(_grads_of(model, x, y), value=jnp.array(1.0))
    optimizer.update(_grads_of(model, x, y), value=jnp.array(2.0))
    optimizer.update(_grads_of(model, x, y), value=jnp.array(3.0))
    scale = optimizer.opt_state[1].scale
    assert isinstance(scale, nnx.OptState)
    assert float(scale.value) < 1.0


def test_update_inside_jax_jit_via_split_merge():
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.05))
    start = nnx.state(model, nnx.Param).to_pure_dict()
    graphdef, state = nnx.split(optimizer)

    @jax.jit
    def train_step(state):
        opt = nnx.merge(graphdef, state)
        opt.update(opt.model, _grads_of(opt.model, x, y))
        return nnx.state(opt)

    for _ in range(2):
        state = train_step(state)
    nnx.update(optimizer, state)
    expected, _ = _reference_loop(optax.adam(0.05), start, x, y, 2)
    np.testing.assert_allclose(model.w.value, expected["w"], rtol=1e-5, atol=1e-6)
    assert int(optimizer.step.value) == 2


def test_linear_regression_recovers_slope_and_intercept():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(1000, 1)).astype(np.float32)
    Y = (0.8 * X + 0.4 + rng.normal(scale=0.1, size=(1000, 1))).astype(np.float32)
    model = Affine(1, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.05))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def loss_and_grads(params, rest, x, y):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest)
            return jnp.mean((m(x) - y) ** 2)

        return jax.value_and_grad(loss_fn)(params)

    for _ in range(300):
        idx = rng.integers(0, 1000, size=(64,))
        params, rest = nnx.state(model, nnx.Param, ...)
        _, grads = loss_and_grads(params, rest, X[idx], Y[idx])
        optimizer.update(grads)
    np.testing.assert_allclose(float(model.w.value[0, 0]), 0.8, atol=0.05)
    np.testing.assert_allclose(float(model.b.value[0]), 0.4, atol=0.05)


def test_raw_opt_state_assigned_back_is_rewrapped():
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.05))
    optimizer.update(_grads_of(model, x, y))
    raw = jax.tree.map(
        lambda v: v.value, optimizer.opt_state, is_leaf=lambda v: isinstance(v, nnx.Variable)
    )
    optimizer.opt_state = raw  # as after restoring a checkpoint of plain arrays
    optimizer.update(_grads_of(model, x, y))
    assert int(optimizer.opt_state[0].count.value) == 2
    assert isinstance(optimizer.opt_state[0].mu["w"], nnx.OptState)
