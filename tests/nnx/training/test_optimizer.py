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


def test_update_with_a_model_of_another_layout_raises():
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    other = Affine(3, 4, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"at 'b' the optimizer has shape \(2,\) and the model has \(4,\)"):
        optimizer.update(other, jax.tree.map(jnp.zeros_like, nnx.state(other, nnx.Param)))


def test_update_of_a_copy_of_the_model_updates_the_copy_and_rebinds_it():
    # as after ``model = jax.sharding.reshard(model, spec)``: a new object, the same layout
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    start = nnx.state(model, nnx.Param).to_pure_dict()
    copy = jax.tree.map(lambda a: a, model)
    assert copy is not model
    optimizer.update(copy, _grads_of(copy, x, y))
    g = jax.grad(_loss)(start, x, y)
    np.testing.assert_allclose(copy.w[...], start["w"] - 0.1 * g["w"], rtol=1e-6)
    np.testing.assert_array_equal(model.w[...], start["w"])
    assert optimizer.model is copy


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


def test_update_returns_optax_updates():
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
    start = nnx.state(model, nnx.Param).to_pure_dict()
    tx = optax.adam(0.05)
    g = jax.grad(_loss)(start, x, y)
    expected, _ = tx.update(g, tx.init(start), start)
    updates = optimizer.update(model, _grads_of(model, x, y))
    assert isinstance(updates, nnx.State)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], expected["b"], rtol=1e-6)


def test_model_and_optimizer_updates_its_model_and_can_be_subclassed():
    x, y = _data()

    class WithMetrics(nnx.ModelAndOptimizer):
        def __init__(self, model, tx, metrics):
            self.metrics = metrics
            super().__init__(model, tx)

        def update(self, *, grads, **updates):
            self.metrics.update(**updates)
            return super().update(grads)

    model = Affine(3, 2, rngs=nnx.Rngs(0))
    start = nnx.state(model, nnx.Param).to_pure_dict()
    state = WithMetrics(model, optax.sgd(0.1), nnx.metrics.Average())
    state.update(grads=_grads_of(model, x, y), values=jnp.array([1.0, 3.0]))
    g = jax.grad(_loss)(start, x, y)
    np.testing.assert_allclose(model.w[...], start["w"] - 0.1 * g["w"], rtol=1e-6)
    assert float(state.metrics.compute()) == 2.0
    assert isinstance(state, nnx.Optimizer) and state.model is model


def test_lbfgs_with_value_fn_matches_optax():
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    start = nnx.state(model, nnx.Param).to_pure_dict()
    optimizer = nnx.Optimizer(model, optax.lbfgs(), wrt=nnx.Param)

    def value_fn(params):  # a State of arrays shaped like the optimized Params
        m = nnx.merge(graphdef, params, rest)
        return jnp.mean((m(x) - y) ** 2)

    for _ in range(2):
        value, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads, grad=grads, value=value, value_fn=value_fn)

    tx, params = optax.lbfgs(), start
    opt_state = tx.init(params)
    for _ in range(2):
        value, g = jax.value_and_grad(_loss)(params, x, y)
        updates, opt_state = tx.update(
            g, opt_state, params, value=value, grad=g, value_fn=lambda p: _loss(p, x, y)
        )
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(model.w[...], params["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.b[...], params["b"], rtol=1e-5, atol=1e-6)


def test_partition_with_labels_from_map_state_matches_optax():
    x, y = _data()
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    start = nnx.state(model, nnx.Param).to_pure_dict()
    labels = nnx.map_state(lambda path, v: path[-1], nnx.state(model, nnx.Param))
    rates = {"w": optax.sgd(0.1), "b": optax.sgd(1.0)}
    optimizer = nnx.Optimizer(model, optax.partition(rates, labels), wrt=nnx.Param)
    optimizer.update(model, _grads_of(model, x, y))
    g = jax.grad(_loss)(start, x, y)
    np.testing.assert_allclose(model.w[...], start["w"] - 0.1 * g["w"], rtol=1e-6)
    np.testing.assert_allclose(model.b[...], start["b"] - 1.0 * g["b"], rtol=1e-6)


class RawArrays(nnx.Module):
    def __init__(self):
        self.w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)), jnp.float32)
        self.count = jnp.array(0)

    def __call__(self, x):
        return x @ self.w


def test_raw_array_attributes_selected_by_a_predicate_under_jax_jit():
    x, y = _data()
    wrt = lambda path, value: path[-1] == "w"
    model = RawArrays()
    w0 = model.w
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=wrt)

    @jax.jit
    def train_step(model, optimizer):
        graphdef, params, rest = nnx.split(model, wrt, ...)
        grads = jax.grad(lambda p: jnp.mean((nnx.merge(graphdef, p, rest)(x) - y) ** 2))(params)
        optimizer.update(model, grads)
        return model, optimizer

    model, optimizer = train_step(model, optimizer)
    g = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w0)
    np.testing.assert_allclose(model.w, w0 - 0.1 * g, rtol=1e-6)
    assert int(optimizer.step[...]) == 1 and int(model.count) == 0


def test_optimizer_sharding_metadata_goes_to_the_optimizer_state_only():
    model = Affine(3, 2, rngs=nnx.Rngs(0))
    model.w.set_metadata(optimizer_sharding=("in", "out"))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))
    mu = optimizer.opt_state[0].mu["w"]
    assert mu.get_metadata("out_sharding") == ("in", "out")
    assert not mu.has_metadata("optimizer_sharding")
    assert not model.w.has_metadata("out_sharding")


def test_opt_state_indexes_like_optax_state_with_states_for_dicts():
    x, y = _data()
    model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    start = nnx.state(model, nnx.Param).to_pure_dict()
    optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    loss = lambda m: jnp.mean((m(x) - y) ** 2)
    nnx.jit(lambda m, o: o.update(m, nnx.grad(loss)(m)))(model, optimizer)
    g = jax.grad(lambda p: loss(nnx.merge(nnx.graphdef(model), nnx.State(p))))(start)
    mu = optimizer.opt_state[0][1].layers[0]["kernel"]
    assert isinstance(mu, nnx.OptState) and isinstance(optimizer.opt_state[0][1], nnx.State)
    np.testing.assert_allclose(mu[...], 0.1 * g["layers"][0]["kernel"], rtol=1e-6)


def test_grads_as_the_module_jax_grad_returns():
    x, y = _data()
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    w0, b0 = model.kernel[...], model.bias[...]
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    grads = jax.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    assert isinstance(grads, nnx.Linear)
    optimizer.update(model, grads)
    g = jax.grad(lambda p: _loss(p, x, y))({"w": w0, "b": b0})
    np.testing.assert_allclose(model.kernel[...], w0 - 0.1 * g["w"], rtol=1e-6)
    np.testing.assert_allclose(model.bias[...], b0 - 0.1 * g["b"], rtol=1e-6)
