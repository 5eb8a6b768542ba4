import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def _x(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def test_weight_norm_normalizes_columns_and_scales():
    layer = nnx.WeightNorm(
        nnx.Linear(3, 2, rngs=nnx.Rngs(0)), scale_init=nnx.initializers.constant(2.0),
        rngs=nnx.Rngs(1),
    )
    assert list(layer.scales) == [("kernel",)]
    assert isinstance(layer.scales[("kernel",)], nnx.Param)
    np.testing.assert_array_equal(layer.scales[("kernel",)].value, [2.0, 2.0])
    v = np.asarray(layer.layer_instance.kernel.value, np.float64)
    x = _x((4, 3))
    expected = x @ (v / np.linalg.norm(v, axis=0) * 2.0) + np.asarray(layer.layer_instance.bias)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    # the wrapped layer now holds the normalized kernel
    np.testing.assert_allclose(
        np.linalg.norm(layer.layer_instance.kernel.value, axis=0), [2.0, 2.0], rtol=1e-6
    )


def test_weight_norm_whole_tensor_without_scale_and_filter():
    linear = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    layer = nnx.WeightNorm(linear, feature_axes=None, use_scale=False,
                           variable_filter=nnx.PathContains("bias"), rngs=nnx.Rngs(1))
    assert layer.scales is None
    linear.bias.value = jnp.array([3.0, 4.0])
    kernel = np.asarray(linear.kernel.value)
    layer(jnp.ones((1, 3)))
    np.testing.assert_allclose(linear.bias.value, [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(linear.kernel.value, kernel)


def test_weight_norm_gradient_reaches_the_scale():
    layer = nnx.WeightNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    v = np.asarray(layer.layer_instance.kernel.value)
    x = jnp.ones((1, 3))
    grads = nnx.grad(lambda m: jnp.sum(m(x)))(layer)
    # d/dg sum(x @ (v / |v|) * g) = x @ (v / |v|)
    expected = (np.ones((1, 3)) @ (v / np.linalg.norm(v, axis=0)))[0]
    np.testing.assert_allclose(grads["scales"][("kernel",)].value, expected, rtol=1e-5)


def test_spectral_norm_gives_unit_spectral_norm():
    linear = nnx.Linear(4, 5, rngs=nnx.Rngs(0))
    layer = nnx.SpectralNorm(linear, n_steps=30, rngs=nnx.Rngs(1))
    assert set(layer.batch_stats) == {("kernel", "u"), ("kernel", "sigma")}
    assert layer.batch_stats[("kernel", "u")].shape == (1, 5)
    sigma = np.linalg.svd(np.asarray(linear.kernel.value), compute_uv=False)[0]
    x = _x((2, 4))
    kernel = np.asarray(linear.kernel.value)
    y = layer(x)
    np.testing.assert_allclose(y, x @ (kernel / sigma) + np.asarray(linear.bias), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(layer.batch_stats[("kernel", "sigma")].value, sigma, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(linear.kernel.value, ord=2), 1.0, rtol=1e-4)


def test_spectral_norm_update_stats_and_eval():
    layer = nnx.SpectralNorm(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    u0 = np.asarray(layer.batch_stats[("kernel", "u")].value)
    layer(jnp.ones((1, 3)), update_stats=False)
    np.testing.assert_array_equal(layer.batch_stats[("kernel", "u")].value, u0)
    layer.eval()
    assert layer.use_running_average is True
    layer(jnp.ones((1, 3)))
    np.testing.assert_array_equal(layer.batch_stats[("kernel", "u")].value, u0)
    layer.train()
    layer(jnp.ones((1, 3)))
    assert not np.array_equal(layer.batch_stats[("kernel", "u")].value, u0)


def test_spectral_norm_higher_rank_kernels():
    conv = nnx.Conv(2, 3, (2, 2), rngs=nnx.Rngs(0))
    layer = nnx.SpectralNorm(conv, n_steps=30, rngs=nnx.Rngs(1))
    assert layer.batch_stats[("kernel", "u")].shape == (1, 3)
    layer(jnp.ones((1, 4, 4, 2)))
    flat = np.asarray(conv.kernel.value).reshape(-1, 3)
    np.testing.assert_allclose(np.linalg.norm(flat, ord=2), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match=r"SpectralNorm: the parameter at \('kernel',\) has "
                       r"shape \(2, 2, 2, 3\)"):
        nnx.SpectralNorm(nnx.Conv(2, 3, (2, 2), rngs=nnx.Rngs(0)), error_on_non_matrix=True,
                         rngs=nnx.Rngs(1))


def test_spectral_norm_under_jit_writes_back_stats():
    layer = nnx.SpectralNorm(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    u0 = np.asarray(layer.batch_stats[("kernel", "u")].value)
    y = nnx.jit(lambda m, x: m(x))(layer, jnp.ones((1, 3)))
    assert y.shape == (1, 3)
    assert not np.array_equal(layer.batch_stats[("kernel", "u")].value, u0)
    assert jax.numpy.isfinite(layer.batch_stats[("kernel", "sigma")].value)
