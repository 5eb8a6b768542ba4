import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def _ref_conv(x, k, strides, padding, lhs_dil=None, rhs_dil=None, groups=1):
    n = k.ndim - 2
    spatial = "HWD"[:n]
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    return jax.lax.conv_general_dilated(
        x, k, strides, padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
        dimension_numbers=dn, feature_group_count=groups,
    )


def _np_conv1d_valid(x, k):
    # x: (N, L, Cin), k: (K, Cin, Cout); cross-correlation
    K = k.shape[0]
    out = np.zeros((x.shape[0], x.shape[1] - K + 1, k.shape[2]), np.float32)
    for t in range(out.shape[1]):
        out[:, t] = np.einsum("nkc,kco->no", x[:, t:t + K], k)
    return out


def test_conv2d_same_matches_lax_and_shapes():
    conv = nnx.Conv(3, 4, kernel_size=(3, 3), rngs=nnx.Rngs(0))
    assert conv.kernel.shape == (3, 3, 3, 4) and conv.bias.shape == (4,)
    conv.bias.value = jnp.arange(4.0)
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
    expected = _ref_conv(x, conv.kernel.value, (1, 1), "SAME") + jnp.arange(4.0)
    y = conv(x)
    assert y.shape == (2, 5, 5, 4)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_conv1d_int_kernel_valid_matches_numpy():
    conv = nnx.Conv(2, 3, kernel_size=3, padding="VALID", rngs=nnx.Rngs(0))
    assert conv.kernel.shape == (3, 2, 3)
    x = np.random.RandomState(0).randn(2, 6, 2).astype(np.float32)
    np.testing.assert_allclose(
        conv(x), _np_conv1d_valid(x, np.asarray(conv.kernel.value)), rtol=1e-5, atol=1e-5
    )


def test_conv_unbatched_and_multi_batch_inputs():
    conv = nnx.Conv(2, 3, kernel_size=(3,), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 2))
    y = conv(x)
    assert y.shape == (2, 4, 6, 3)
    np.testing.assert_allclose(conv(x[1, 2]), y[1, 2], rtol=1e-5, atol=1e-6)


def test_conv_strides_dilation_and_explicit_padding():
    conv = nnx.Conv(
        1, 2, (3, 3), strides=2, padding=[(1, 0), 2], kernel_dilation=(1, 2),
        input_dilation=(2, 1), rngs=nnx.Rngs(0),
    )
    assert conv.padding == ((1, 0), (2, 2))
    x = jax.random.normal(jax.random.key(0), (1, 5, 6, 1))
    expected = _ref_conv(
        x, conv.kernel.value, (2, 2), ((1, 0), (2, 2)), lhs_dil=(2, 1), rhs_dil=(1, 2)
    )
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)
    int_pad = nnx.Conv(1, 1, (3,), padding=1, use_bias=False, rngs=nnx.Rngs(0))
    assert int_pad(jnp.ones((1, 4, 1))).shape == (1, 4, 1)


def test_conv_circular_padding_wraps():
    conv = nnx.Conv(1, 1, (3,), padding="CIRCULAR", use_bias=False, rngs=nnx.Rngs(0))
    x = np.random.RandomState(0).randn(1, 5, 1).astype(np.float32)
    padded = np.concatenate([x[:, -1:], x, x[:, :1]], axis=1)
    expected = _np_conv1d_valid(padded, np.asarray(conv.kernel.value))
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_conv_causal_padding():
    conv = nnx.Conv(1, 1, 3, padding="CAUSAL", use_bias=False, rngs=nnx.Rngs(0))
    x = np.random.RandomState(0).randn(1, 4, 1).astype(np.float32)
    padded = np.concatenate([np.zeros((1, 2, 1), np.float32), x], axis=1)
    np.testing.assert_allclose(
        conv(x), _np_conv1d_valid(padded, np.asarray(conv.kernel.value)), rtol=1e-5, atol=1e-5
    )


def test_conv_feature_groups_and_mask():
    conv = nnx.Conv(4, 2, (1,), feature_group_count=2, use_bias=False, rngs=nnx.Rngs(0))
    assert conv.kernel.shape == (1, 2, 2)
    x = jax.random.normal(jax.random.key(0), (1, 3, 4))
    k = np.asarray(conv.kernel.value)[0]
    x_ = np.asarray(x)
    expected = np.concatenate([x_[..., :2] @ k[:, :1], x_[..., 2:] @ k[:, 1:]], axis=-1)
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)
    mask = jnp.zeros((1, 2, 2)).at[..., 0].set(1.0)
    masked = nnx.Conv(4, 2, (1,), feature_group_count=2, use_bias=False, mask=mask,
                      rngs=nnx.Rngs(0))
    np.testing.assert_allclose(masked(x)[..., 1], 0.0)
    with pytest.raises(ValueError, match="divisible by feature_group_count"):
        nnx.Conv(3, 2, (1,), feature_group_count=2, rngs=nnx.Rngs(0))


def test_conv_dtypes():
    conv = nnx.Conv(2, 2, (3,), dtype=jnp.bfloat16, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert conv.kernel.dtype == jnp.float16
    assert conv(jnp.ones((1, 4, 2))).dtype == jnp.bfloat16
    promoted = nnx.Conv(2, 2, (3,), rngs=nnx.Rngs(0))
    assert promoted(jnp.ones((1, 4, 2), jnp.bfloat16)).dtype == jnp.float32


def test_conv_wrong_feature_size():
    conv = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as e:
        conv(jnp.ones((1, 5, 5, 2)))
    assert str(e.value) == (
        "Conv expected inputs with 3 features in the last axis, got 2 (input shape (1, 5, 5, 2))"
    )
    with pytest.raises(ValueError, match="at least 3 dims"):
        conv(jnp.ones((5, 3)))


def test_conv_transpose_matches_lax():
    layer = nnx.ConvTranspose(2, 3, (3, 3), strides=(2, 2), rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (3, 3, 2, 3)
    layer.bias.value = jnp.ones(3)
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 2))
    expected = jax.lax.conv_transpose(
        x, layer.kernel.value, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ) + 1.0
    y = layer(x)
    assert y.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert layer(x[0]).shape == (8, 8, 3)


def test_conv_transpose_circular_stride1_equals_circular_conv():
    t = nnx.ConvTranspose(1, 1, (3,), padding="CIRCULAR", use_bias=False, rngs=nnx.Rngs(0))
    x = np.random.RandomState(0).randn(1, 6, 1).astype(np.float32)
    padded = np.concatenate([x[:, -1:], x, x[:, :1]], axis=1)
    expected = _np_conv1d_valid(padded, np.asarray(t.kernel.value))
    np.testing.assert_allclose(t(x), expected, rtol=1e-5, atol=1e-5)
    strided = nnx.ConvTranspose(1, 1, (3,), strides=2, padding="CIRCULAR", rngs=nnx.Rngs(0))
    assert strided(x).shape == (1, 12, 1)


def test_conv_transpose_wrong_feature_size():
    layer = nnx.ConvTranspose(2, 3, (3,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ConvTranspose expected inputs with 2 features in the "
                       r"last axis, got 5 \(input shape \(1, 4, 5\)\)"):
        layer(jnp.ones((1, 4, 5)))


def test_conv_preferred_element_type_and_custom_conv():
    conv = nnx.Conv(
        2, 3, (3,), param_dtype=jnp.bfloat16, use_bias=False,
        preferred_element_type=jnp.float32, rngs=nnx.Rngs(0),
    )
    x = jnp.asarray(np.random.RandomState(0).randn(1, 5, 2), jnp.bfloat16)
    y = conv(x)
    assert y.dtype == jnp.float32
    expected = jax.lax.conv_general_dilated(
        x, conv.kernel.value, (1,), "SAME", dimension_numbers=("NHC", "HIO", "NHC"),
        preferred_element_type=jnp.float32,
    )
    np.testing.assert_array_equal(y, expected)

    def negated(*args, **kwargs):
        return -jax.lax.conv_general_dilated(*args, **kwargs)

    custom = nnx.Conv(2, 3, (3,), use_bias=False, conv_general_dilated=negated, rngs=nnx.Rngs(0))
    x32 = x.astype(jnp.float32)
    np.testing.assert_allclose(
        custom(x32), -_ref_conv(x32, custom.kernel.value, (1,), "SAME"), rtol=1e-6
    )


def test_conv_transpose_preferred_element_type():
    conv = nnx.ConvTranspose(
        2, 3, (3,), strides=2, param_dtype=jnp.bfloat16, use_bias=False,
        preferred_element_type=jnp.float32, rngs=nnx.Rngs(0),
    )
    x = jnp.asarray(np.random.RandomState(1).randn(1, 4, 2), jnp.bfloat16)
    y = conv(x)
    expected = jax.lax.conv_transpose(
        x, conv.kernel.value, (2,), "SAME", dimension_numbers=("NHC", "HIO", "NHC"),
        preferred_element_type=jnp.float32,
    )
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, expected)


def test_conv_reflect_padding_matches_numpy_pad():
    conv = nnx.Conv(1, 2, (3, 3), padding="REFLECT", rngs=nnx.Rngs(0))
    x = np.random.RandomState(2).randn(1, 4, 5, 1).astype(np.float32)
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    expected = _ref_conv(padded, conv.kernel.value, (1, 1), "VALID") + conv.bias.value
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ConvTranspose: 'REFLECT' padding is only supported"):
        nnx.ConvTranspose(1, 1, 3, padding="REFLECT", rngs=nnx.Rngs(0))


def test_conv_metadata_keywords():
    conv = nnx.Conv(2, 3, 3, kernel_metadata={"tag": "k"}, bias_metadata={"tag": "b"},
                    rngs=nnx.Rngs(0))
    assert conv.kernel.get_metadata("tag") == "k" and conv.bias.get_metadata("tag") == "b"
    transpose = nnx.ConvTranspose(2, 3, 3, kernel_metadata={"tag": "t"}, rngs=nnx.Rngs(0))
    assert transpose.kernel.get_metadata("tag") == "t"
