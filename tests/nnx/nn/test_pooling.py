import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def _np_pool2d(x, window, strides, fn):
    n, h, w, c = x.shape
    oh, ow = (h - window[0]) // strides[0] + 1, (w - window[1]) // strides[1] + 1
    out = np.zeros((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * strides[0]:i * strides[0] + window[0],
                      j * strides[1]:j * strides[1] + window[1]]
            out[:, i, j] = fn(patch, axis=(1, 2))
    return out


X = np.random.RandomState(0).randn(2, 5, 4, 3).astype(np.float32)


def test_max_min_avg_pool_valid_match_numpy():
    np.testing.assert_allclose(
        nnx.max_pool(X, (2, 2), strides=(2, 1)), _np_pool2d(X, (2, 2), (2, 1), np.max)
    )
    np.testing.assert_allclose(
        nnx.min_pool(X, (3, 2)), _np_pool2d(X, (3, 2), (1, 1), np.min)
    )
    np.testing.assert_allclose(
        nnx.avg_pool(X, (2, 2), strides=(2, 2)), _np_pool2d(X, (2, 2), (2, 2), np.mean),
        rtol=1e-6,
    )


def test_pool_unbatched_and_extra_batch_dims():
    y = nnx.max_pool(X, (2, 2))
    np.testing.assert_array_equal(nnx.max_pool(X[0], (2, 2)), y[0])
    stacked = np.stack([X, X])
    assert nnx.max_pool(stacked, (2, 2)).shape == (2,) + y.shape


def test_pool_same_padding_and_generic_pool():
    y = nnx.max_pool(X, (3, 3), padding="SAME")
    assert y.shape == X.shape
    expected = jax.lax.reduce_window(X, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    np.testing.assert_array_equal(y, expected)
    summed = nnx.pool(X, 0.0, jax.lax.add, (2, 2), (1, 1), "VALID")
    np.testing.assert_allclose(summed, _np_pool2d(X, (2, 2), (1, 1), np.sum), rtol=1e-5)


def test_avg_pool_count_include_pad():
    x = jnp.ones((1, 3, 1))
    with_pad = nnx.avg_pool(x, (3,), padding=((1, 1),))
    np.testing.assert_allclose(with_pad[0, :, 0], [2 / 3, 1.0, 2 / 3], rtol=1e-6)
    without = nnx.avg_pool(x, (3,), padding=((1, 1),), count_include_pad=False)
    np.testing.assert_allclose(without[0, :, 0], [1.0, 1.0, 1.0], rtol=1e-6)


def test_pool_errors():
    with pytest.raises(ValueError, match="needs one entry per window axis"):
        nnx.max_pool(X, (2, 2), strides=(1,))
    with pytest.raises(ValueError, match="at least 3 dims"):
        nnx.max_pool(jnp.ones((4, 3)), (2, 2))
    with pytest.raises(ValueError, match=r"padding needs 2 \(low, high\) pairs"):
        nnx.max_pool(X, (2, 2), padding=((1, 1),))
