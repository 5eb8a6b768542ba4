import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Count(nnx.Variable):
    pass


class Lin(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(6.0).reshape(3, 2) / 10)
        self.b = nnx.Param(jnp.ones((2,)))
        self.count = Count(jnp.array(0))

    def __call__(self, x):
        self.count += 1
        return x @ self.w + self.b


X = jnp.arange(12.0).reshape(4, 3) / 10


def loss(m, x):
    return jnp.mean(m(x) ** 2)


def test_grad_matches_jax_reference_and_only_params():
    m = Lin()
    g = nnx.grad(loss)(m, X)
    ref_w, ref_b = jax.grad(lambda w, b: jnp.mean((X @ w + b) ** 2), argnums=(0, 1))(
        m.w.value, m.b.value
    )
    assert isinstance(g, nnx.State) and sorted(g) == ["b", "w"]
    assert isinstance(g["w"], nnx.Param)
    np.testing.assert_allclose(g["w"].value, ref_w, rtol=1e-6)
    np.testing.assert_allclose(g["b"].value, ref_b, rtol=1e-6)
    assert int(m.count.value) == 1  # the update inside grad reached the model


def test_value_and_grad_has_aux_and_wrt_and_diffstate():
    m = Lin()
    (value, aux), g = nnx.value_and_grad(lambda m: (loss(m, X), {"n": 2}), has_aux=True)(m)
    assert float(value) == pytest.approx(float(jnp.mean((X @ m.w.value + m.b.value) ** 2)))
    assert aux == {"n": 2}
    g_b = nnx.grad(loss, wrt=nnx.PathContains("b"))(m, X)
    assert list(g_b) == ["b"]
    g_ds = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.PathContains("w")))(m, X)
    assert list(g_ds) == ["w"]


def test_grad_of_arrays_and_several_argnums():
    m = Lin()
    g_m, g_x = nnx.grad(loss, argnums=(0, 1))(m, X)
    ref = jax.grad(lambda x: jnp.mean((x @ m.w.value + m.b.value) ** 2))(X)
    np.testing.assert_allclose(g_x, ref, rtol=1e-6)
    assert sorted(g_m) == ["b", "w"]


def test_sgd_step_inside_jit_lowers_loss():
    m = Lin()

    @nnx.jit
    def step(m):
        value, g = nnx.value_and_grad(loss)(m, X)
        params = nnx.state(m, nnx.Param)
        nnx.update(m, jax.tree.map(lambda p, g: p - 0.1 * g, params, g))
        return value

    losses = [float(step(m)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert int(m.count.value) == 5


def test_remat_same_value_and_grad():
    m = Lin()
    direct = nnx.grad(loss)(m, X)
    rematted = nnx.grad(nnx.remat(loss))(m, X)
    np.testing.assert_allclose(direct["w"].value, rematted["w"].value, rtol=1e-6)
