"""Seed examples that use transforms, run with ``import nnx`` (only the allowed edits)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import random

import nnx


class Linear(nnx.Module):  # seed 001 "The Module System"
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        key = rngs.params()
        self.w = nnx.Param(jax.random.uniform(key, (din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))
        self.din, self.dout = din, dout

    def __call__(self, x: jax.Array):
        return x @ self.w + self.b


class MLP(nnx.Module):  # seed 001 "Nested Modules"
    def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs):
        self.linear1 = Linear(din, dmid, rngs=rngs)
        self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
        self.bn = nnx.BatchNorm(dmid, rngs=rngs)
        self.linear2 = Linear(dmid, dout, rngs=rngs)

    def __call__(self, x: jax.Array):
        x = nnx.gelu(self.dropout(self.bn(self.linear1(x))))
        return self.linear2(x)


def test_seed001_transforms_train_step():
    model = MLP(2, 16, 10, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3))  # reference sharing

    @nnx.jit  # automatic state management
    def train_step(model, optimizer, x, y):
        def loss_fn(model: MLP):
            y_pred = model(x)
            return jnp.mean((y_pred - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(grads)  # inplace updates

        return loss

    x, y = jnp.ones((5, 2)), jnp.ones((5, 10))
    w_before = np.asarray(model.linear1.w.value)
    loss = train_step(model, optimizer, x, y)
    assert loss.shape == ()
    assert int(optimizer.step.value) == 1
    # BatchNorm and Dropout updates reached the model outside; the optimizer moved the params.
    assert not np.allclose(model.bn.mean.value, 0.0)
    assert int(model.dropout.rngs.count.value) == 1
    assert not np.allclose(model.linear1.w.value, w_before)
    loss2 = train_step(model, optimizer, x, y)
    assert int(optimizer.step.value) == 2 and float(loss2) < float(loss)


def test_seed001_scan_over_layers():
    @nnx.vmap(in_axes=0, out_axes=0)
    def create_model(key: jax.Array):
        return MLP(10, 32, 10, rngs=nnx.Rngs(key))

    keys = jax.random.split(jax.random.key(0), 5)
    model = create_model(keys)

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def forward(model: MLP, x):
        x = model(x)
        return x

    x = jnp.ones((3, 10))
    y = forward(model, x)
    assert y.shape == (3, 10)
    assert model.linear1.w.shape == (5, 10, 32)
    np.testing.assert_array_equal(model.dropout.rngs.count.value, np.ones(5))


def test_seed004_vmap_weights_and_weightstack():
    class Weights(nnx.Module):
        def __init__(self, kernel: jax.Array, bias: jax.Array):
            self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)

    def create_weights(seed: jax.Array):
        return Weights(
            kernel=random.uniform(random.key(seed), (2, 3)),
            bias=jnp.zeros((3,)),
        )

    def vector_dot(weights: Weights, x: jax.Array):
        assert weights.kernel.ndim == 2, 'Batch dimensions not allowed'
        assert x.ndim == 1, 'Batch dimensions not allowed'
        return x @ weights.kernel + weights.bias

    seeds = jnp.arange(10)
    weights = nnx.vmap(create_weights, in_axes=0, out_axes=0)(seeds)
    x = jax.random.normal(random.key(1), (10, 2))
    y = nnx.vmap(vector_dot, in_axes=(0, 0), out_axes=1)(weights, x)
    assert weights.kernel.shape == (10, 2, 3)
    ref = np.einsum("bi,bio->ob", np.asarray(x), np.asarray(weights.kernel.value))
    np.testing.assert_allclose(y, ref, rtol=1e-5)

    class WeightStack(nnx.Module):
        @nnx.vmap(in_axes=(0, 0), out_axes=0)
        def __init__(self, seed: jax.Array):
            self.kernel = nnx.Param(random.uniform(random.key(seed), (2, 3)))
            self.bias = nnx.Param(jnp.zeros((3,)))

        @nnx.vmap(in_axes=(0, 0), out_axes=1)
        def __call__(self, x: jax.Array):
            assert self.kernel.ndim == 2, 'Batch dimensions not allowed'
            assert x.ndim == 1, 'Batch dimensions not allowed'
            return x @ self.kernel + self.bias

    weights = WeightStack(jnp.arange(10))
    x = jax.random.normal(random.key(1), (10, 2))
    y = weights(x)
    assert weights.kernel.shape == (10, 2, 3) and y.shape == (3, 10)
    np.testing.assert_allclose(
        y, np.einsum("bi,bio->ob", np.asarray(x), np.asarray(weights.kernel.value)), rtol=1e-5
    )


def test_seed000_scan_mlp_in_modern_api():
    class Block(nnx.Module):
        def __init__(self, dim: int, *, rngs: nnx.Rngs):
            self.linear = nnx.Linear(dim, dim, rngs=rngs)
            self.bn = nnx.BatchNorm(dim, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return jax.nn.gelu(self.dropout(self.bn(self.linear(x))))

    class ScanMLP(nnx.Module):
        def __init__(self, dim: int, *, n_layers: int, rngs: nnx.Rngs):
            self.n_layers = n_layers

            @nnx.split_rngs(splits=n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create_block(rngs: nnx.Rngs):
                return Block(dim, rngs=rngs)

            self.layers = create_block(rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def scan_fn(x: jax.Array, block: Block):
                return block(x)

            return scan_fn(x, self.layers)

    model = ScanMLP(4, n_layers=3, rngs=nnx.Rngs(0))
    assert model.layers.linear.kernel.shape == (3, 4, 4)
    y = model(jnp.ones((2, 4)))
    assert y.shape == (2, 4)
    assert not np.allclose(model.layers.bn.mean.value, 0.0)
    np.testing.assert_array_equal(model.layers.dropout.rngs.count.value, np.ones(3))


def test_seed002_shared_linear_stays_in_sync_through_a_gradient_step():
    class Block(nnx.Module):
        def __init__(self, linear: nnx.Linear, rngs):
            self.linear = linear
            self.bn = nnx.BatchNorm(2, rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.bn(self.linear(x)))

    class Model(nnx.Module):
        def __init__(self, rngs):
            shared = nnx.Linear(2, 2, rngs=rngs)
            self.block1 = Block(shared, rngs)
            self.block2 = Block(shared, rngs)

        def __call__(self, x):
            x = self.block1(x)
            x = self.block2(x)
            return x

    def loss_fn(model: Model, x: jax.Array, y: jax.Array):
        model.set_attributes(use_running_average=False)
        y_pred = model(x)
        return jnp.mean((y - y_pred) ** 2)

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    kernel_before = np.asarray(model.block1.linear.kernel.value)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(grads)
        return loss

    x = jnp.arange(8.0).reshape(4, 2) / 8
    step(model, optimizer, x, jnp.ones((4, 2)))
    assert model.block1.linear is model.block2.linear
    assert not np.allclose(model.block1.linear.kernel.value, kernel_before)
    assert len(nnx.state(model, nnx.Param).flat_state()) == 2 + 2 * 2  # shared kernel/bias once


def test_seed000_linear_regression_recovers_weights_with_optimizer_in_jit():
    np.random.seed(0)
    X = np.random.uniform(size=(1000, 1))
    Y = 0.8 * X + 0.4 + np.random.normal(scale=0.1, size=(1000, 1))
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(0.05))

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(grads)
        return loss

    for _ in range(500):
        idx = np.random.randint(0, 1000, size=(32,))
        train_step(model, optimizer, X[idx], Y[idx])
    assert abs(float(model.kernel.value[0, 0]) - 0.8) < 0.05
    assert abs(float(model.bias.value[0]) - 0.4) < 0.05
