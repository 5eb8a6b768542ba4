import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def _x(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32) * 2.0 + 1.0


def test_batchnorm_params_and_stats():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    assert isinstance(bn.mean, nnx.BatchStat) and isinstance(bn.var, nnx.BatchStat)
    assert isinstance(bn.scale, nnx.Param) and isinstance(bn.bias, nnx.Param)
    np.testing.assert_array_equal(bn.mean.value, np.zeros(3))
    np.testing.assert_array_equal(bn.var.value, np.ones(3))
    np.testing.assert_array_equal(bn.scale.value, np.ones(3))
    assert set(nnx.state(bn, nnx.BatchStat)) == {"mean", "var"}
    assert set(nnx.state(bn, nnx.Param)) == {"bias", "scale"}


def test_batchnorm_train_normalizes_and_updates_running_stats():
    bn = nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))
    bn.scale.value = jnp.array([1.0, 2.0, 3.0])
    bn.bias.value = jnp.array([0.0, 1.0, -1.0])
    x = _x((4, 2, 3))
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
    expected = (x - mean) / np.sqrt(var + 1e-5) * np.array([1, 2, 3]) + np.array([0, 1, -1])
    np.testing.assert_allclose(bn(x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.mean.value, 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var.value, 0.9 + 0.1 * var, rtol=1e-5)
    bn(x)
    np.testing.assert_allclose(bn.mean.value, 0.9 * 0.1 * mean + 0.1 * mean, rtol=1e-5)


def test_batchnorm_eval_uses_and_keeps_running_stats():
    bn = nnx.BatchNorm(2, use_running_average=True, rngs=nnx.Rngs(0))
    bn.mean.value = jnp.array([1.0, -1.0])
    bn.var.value = jnp.array([4.0, 0.25])
    x = _x((3, 2))
    expected = (x - np.array([1.0, -1.0])) / np.sqrt(np.array([4.0, 0.25]) + 1e-5)
    np.testing.assert_allclose(bn(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.mean.value, [1.0, -1.0])
    np.testing.assert_array_equal(bn.var.value, [4.0, 0.25])


def test_batchnorm_per_call_override_and_train_eval_switch():
    bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    x = _x((5, 2))
    bn(x, use_running_average=True)
    np.testing.assert_array_equal(bn.mean.value, np.zeros(2))
    model = nnx.Sequential(bn)
    model.eval()
    assert bn.use_running_average is True
    np.testing.assert_allclose(model(x), x / np.sqrt(1 + 1e-5), rtol=1e-5)
    np.testing.assert_array_equal(bn.mean.value, np.zeros(2))
    model.train()
    assert bn.use_running_average is False
    model(x)
    np.testing.assert_allclose(bn.mean.value, 0.01 * x.mean(0), rtol=1e-5)


def test_batchnorm_mask_and_axis():
    bn = nnx.BatchNorm(2, axis=1, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
    assert bn.scale is None and bn.bias is None
    x = _x((4, 2, 3))
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    expected = (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)
    np.testing.assert_allclose(bn(x), expected, rtol=1e-4, atol=1e-5)
    masked = nnx.BatchNorm(1, momentum=0.0, rngs=nnx.Rngs(0))
    xs = np.array([[1.0], [3.0], [100.0]], np.float32)
    masked(xs, mask=np.array([[True], [True], [False]]))
    np.testing.assert_allclose(masked.mean.value, [2.0])
    np.testing.assert_allclose(masked.var.value, [1.0])


def test_batchnorm_axis_name_under_vmap_uses_batch_statistics():
    bn = nnx.BatchNorm(3, axis_name="batch", use_fast_variance=False, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(bn)
    x = _x((4, 3))

    def per_example(state, xi):
        layer = nnx.merge(graphdef, state)
        y = layer(xi)
        return y, nnx.state(layer, nnx.BatchStat)

    y, stats = jax.vmap(per_example, in_axes=(None, 0), axis_name="batch")(state, x)
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["mean"].value[2], 0.01 * mean, rtol=1e-5)


def test_batchnorm_dtypes():
    bn = nnx.BatchNorm(2, dtype=jnp.bfloat16, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert bn.scale.dtype == jnp.float16 and bn.mean.dtype == jnp.float32
    assert bn(jnp.ones((2, 2))).dtype == jnp.bfloat16
    assert bn.mean.dtype == jnp.float32
    promoted = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    assert promoted(jnp.ones((2, 2), jnp.bfloat16)).dtype == jnp.float32


def test_batchnorm_wrong_feature_size():
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as e:
        bn(jnp.ones((2, 4)))
    assert str(e.value) == (
        "BatchNorm expected inputs with 3 features in axis 1, got 4 (input shape (2, 4))"
    )


def test_batchnorm_stats_update_through_nnx_jit():
    bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    x = _x((4, 2))
    nnx.jit(lambda m, x: m(x))(bn, x)
    np.testing.assert_allclose(bn.mean.value, 0.01 * x.mean(0), rtol=1e-5)


def test_layernorm_matches_numpy():
    ln = nnx.LayerNorm(4, rngs=nnx.Rngs(0))
    assert ln.scale.shape == (4,) and ln.bias.shape == (4,)
    ln.scale.value = jnp.arange(1.0, 5.0)
    ln.bias.value = jnp.full((4,), 0.5)
    x = _x((2, 3, 4))
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-6) * np.arange(1.0, 5.0) + 0.5
    np.testing.assert_allclose(ln(x), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"LayerNorm expected inputs with 4 features in axis 1, "
                       r"got 3 \(input shape \(2, 3\)\)"):
        ln(jnp.ones((2, 3)))


def test_layernorm_reduction_over_two_axes_and_dtype():
    ln = nnx.LayerNorm(3, reduction_axes=(1, 2), use_bias=False, use_scale=False,
                       dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert ln.scale is None and ln.bias is None
    x = _x((2, 5, 3))
    mean, var = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
    y = ln(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(y, np.float32), (x - mean) / np.sqrt(var + 1e-6), rtol=2e-2, atol=2e-2
    )


def test_rmsnorm_matches_numpy():
    rms = nnx.RMSNorm(3, rngs=nnx.Rngs(0))
    assert rms.scale.shape == (3,) and rms.bias is None
    rms.scale.value = jnp.array([1.0, 2.0, 0.5])
    x = _x((4, 3))
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * np.array([1.0, 2.0, 0.5])
    np.testing.assert_allclose(rms(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="RMSNorm expected inputs with 3 features"):
        rms(jnp.ones((4, 2)))


def test_groupnorm_matches_numpy():
    gn = nnx.GroupNorm(6, num_groups=2, rngs=nnx.Rngs(0))
    assert gn.scale.shape == (6,) and gn.group_size == 3
    gn.bias.value = jnp.arange(6.0)
    x = _x((2, 4, 6))
    g = x.reshape(2, 4, 2, 3)
    mean, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    expected = ((g - mean) / np.sqrt(var + 1e-6)).reshape(2, 4, 6) + np.arange(6.0)
    np.testing.assert_allclose(gn(x), expected, rtol=1e-4, atol=1e-5)
    same = nnx.GroupNorm(6, num_groups=None, group_size=3, rngs=nnx.Rngs(0))
    assert same.num_groups == 2


def test_groupnorm_errors():
    with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
        nnx.GroupNorm(6, num_groups=2, group_size=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"num_features \(6\) must be a positive multiple of "
                       r"num_groups \(4\)"):
        nnx.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0))
    gn = nnx.GroupNorm(6, num_groups=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="GroupNorm expected inputs with 6 features in axis 2, "
                       "got 4"):
        gn(jnp.ones((1, 2, 4)))


def test_instancenorm_matches_numpy():
    inorm = nnx.InstanceNorm(3, rngs=nnx.Rngs(0))
    x = _x((2, 4, 5, 3))
    mean, var = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
    np.testing.assert_allclose(inorm(x), (x - mean) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="InstanceNorm expected inputs with 3 features"):
        inorm(jnp.ones((2, 4, 2)))


def _recording_promote(seen):
    def promote(args, *, dtype=None):
        seen.append(tuple(None if a is None else jnp.asarray(a).shape for a in args))
        return args

    return promote


def test_promote_dtype_gets_the_flax_tuples():
    seen = []
    x = _x((4, 3))
    nnx.BatchNorm(3, promote_dtype=_recording_promote(seen), rngs=nnx.Rngs(0))(x)
    nnx.LayerNorm(3, promote_dtype=_recording_promote(seen), rngs=nnx.Rngs(0))(x)
    nnx.RMSNorm(3, promote_dtype=_recording_promote(seen), rngs=nnx.Rngs(0))(x)
    nnx.GroupNorm(3, num_groups=1, promote_dtype=_recording_promote(seen), rngs=nnx.Rngs(0))(x)
    # BatchNorm: (x, mean, var, scale, bias); LayerNorm / GroupNorm: (x, scale, bias);
    # RMSNorm: (x, scale)
    assert seen == [((4, 3), (3,), (3,), (3,), (3,)), ((4, 3), (3,), (3,)), ((4, 3), (3,)),
                    ((4, 3), (3,), (3,))]


def test_default_promote_casts_input_to_dtype_before_statistics():
    x = _x((2, 6))
    rounded = np.asarray(jnp.asarray(x, jnp.float16), np.float64)
    mean, var = rounded.mean(-1, keepdims=True), rounded.var(-1, keepdims=True)
    expected = (rounded - mean) / np.sqrt(var + 1e-6)
    ln = nnx.LayerNorm(6, dtype=jnp.float16, use_bias=False, use_scale=False, rngs=nnx.Rngs(0))
    y = ln(x)
    assert y.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=2e-3, atol=2e-3)
    skip = nnx.LayerNorm(6, dtype=jnp.float16, use_bias=False, use_scale=False,
                         promote_dtype=lambda args, **kw: args, rngs=nnx.Rngs(0))
    assert skip(x).dtype == jnp.float16


def test_norm_metadata_and_batchnorm_mode_errors():
    bn = nnx.BatchNorm(2, use_running_average=None, scale_metadata={"tag": "s"},
                       bias_metadata={"tag": "b"}, rngs=nnx.Rngs(0))
    assert bn.scale.get_metadata("tag") == "s" and bn.bias.get_metadata("tag") == "b"
    with pytest.raises(ValueError, match="BatchNorm: no use_running_average was given"):
        bn(jnp.ones((2, 2)))
    bn.set_view(use_running_average=True)
    np.testing.assert_allclose(bn(jnp.ones((2, 2))), np.full((2, 2), 1 / np.sqrt(1 + 1e-5)),
                               rtol=1e-6)
    rms = nnx.RMSNorm(2, scale_metadata={"tag": "r"}, rngs=nnx.Rngs(0))
    assert rms.scale.get_metadata("tag") == "r"
    inorm = nnx.InstanceNorm(2, feature_axes=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="InstanceNorm: feature_axes 0 include axis 0"):
        inorm(jnp.ones((2, 3)))


def test_groupnorm_reduction_axes_subset_matches_numpy():
    gn = nnx.GroupNorm(4, num_groups=2, reduction_axes=(2, 3), use_scale=False, use_bias=False,
                       rngs=nnx.Rngs(0))
    x = _x((2, 3, 5, 4))
    g = x.reshape(2, 3, 5, 2, 2)
    mean, var = g.mean((2, 4), keepdims=True), g.var((2, 4), keepdims=True)
    expected = ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
    np.testing.assert_allclose(gn(x), expected, rtol=1e-4, atol=1e-5)


def test_layernorm_complex_input_uses_squared_modulus():
    rs = np.random.RandomState(0)
    x = (rs.randn(2, 4) + 1j * rs.randn(2, 4)).astype(np.complex64)
    ln = nnx.LayerNorm(4, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
    mean = x.mean(-1, keepdims=True)
    var = (np.abs(x - mean) ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(ln(x), (x - mean) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-5)
