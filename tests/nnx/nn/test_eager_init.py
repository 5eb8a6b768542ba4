"""init_value: jax's initializers evaluated eagerly with few compilations, to the same bits."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jitted import compilations

import nnx
from nnx.nn import _eager_init
from nnx.nn._eager_init import has_fast_path, init_value

jinit = jax.nn.initializers
INITIALIZERS = {
    "lecun_normal": jinit.lecun_normal(),
    "lecun_uniform": jinit.lecun_uniform(),
    "glorot_normal": jinit.glorot_normal(),
    "glorot_uniform": jinit.glorot_uniform(),
    "he_normal": jinit.he_normal(),
    "he_uniform": jinit.he_uniform(),
    "fan_avg_truncated": jinit.variance_scaling(2.0, "fan_avg", "truncated_normal"),
    "fan_geo_avg_normal": jinit.variance_scaling(0.3, "fan_geo_avg", "normal", in_axis=(0, 1)),
    "fan_out_uniform": jinit.variance_scaling(1.7, "fan_out", "uniform", batch_axis=0),
    "embed": jinit.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
    "normal": jinit.normal(0.02),
    "uniform": jinit.uniform(0.5),
    "truncated_normal": jinit.truncated_normal(0.3),
    "truncated_normal_bounds": jinit.truncated_normal(1.1, lower=-1.0, upper=3.0),
    "zeros": jinit.zeros,
    "ones": jinit.ones,
}
# sizes below, at and above the bucket bounds, odd and 2-D shapes whose last axis is not a
# multiple of the vector width
SHAPES = [(64, 32), (32, 10), (3, 3, 16, 32), (5, 3), (17, 1, 9), (4096, 1), (300, 300), (1, 2)]


def _key(seed=0):
    return jax.random.fold_in(jax.random.key(seed), 3)


def _same(a, b):
    return (
        a.dtype == b.dtype and a.shape == b.shape and a.sharding == b.sharding
        and a.committed == b.committed and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    )


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_values_are_the_bits_of_the_plain_call(name):
    init = INITIALIZERS[name]
    assert has_fast_path(init)
    for shape in SHAPES:
        for seed in (0, 1):
            key = _key(seed)
            expected = init(key, shape, jnp.float32)
            assert _eager_init._fast_value(init, key, shape, jnp.float32, None) is not None
            assert _same(init_value(init, key, shape, jnp.float32), expected), (name, shape)


def test_without_partitionable_threefry_the_flat_draw_has_the_bits():
    with jax.threefry_partitionable(False):
        for name in ("lecun_normal", "glorot_uniform", "normal"):
            init = INITIALIZERS[name]
            for shape in SHAPES:
                expected = init(_key(), shape, jnp.float32)
                assert _same(init_value(init, _key(), shape, jnp.float32), expected), shape


def test_float64_under_x64_is_the_plain_call_bits():
    with jax.enable_x64(True):
        for name in ("lecun_normal", "he_uniform", "normal", "zeros"):
            init = INITIALIZERS[name]
            key = _key()
            expected = init(key, (32, 10), jnp.float64)
            got = init_value(init, key, (32, 10), jnp.float64)
            assert got.dtype == jnp.float64 and _same(got, expected)


def test_float64_without_x64_is_the_plain_call():
    init = INITIALIZERS["zeros"]
    assert _eager_init._fast_value(init, _key(), (3,), np.float64, None) is None


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_random_initializers_are_the_plain_call(dtype):
    init = INITIALIZERS["lecun_normal"]
    key = _key()
    assert _eager_init._fast_value(init, key, (8, 4), dtype, None) is None
    assert _same(init_value(init, key, (8, 4), dtype), init(key, (8, 4), dtype))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.int32, jnp.bool_, jnp.complex64])
def test_zeros_and_ones_in_other_dtypes_come_from_the_host(dtype):
    for init in (jinit.zeros, jinit.ones):
        got = _eager_init._fast_value(init, _key(), (4, 3), dtype, None)
        assert got is not None and _same(got, init(_key(), (4, 3), dtype))


def test_reshape_to_gives_the_reshaped_value():
    init = INITIALIZERS["lecun_normal"]
    key = _key()
    expected = jnp.reshape(init(key, (6, 10), jnp.float32), (2, 3, 10))
    assert _same(init_value(init, key, (6, 10), jnp.float32, reshape_to=(2, 3, 10)), expected)
    layer = nnx.LinearGeneral((2, 3), 10, axis=(-2, -1), rngs=nnx.Rngs(0))
    reference = jnp.reshape(init(jax.random.fold_in(jax.random.key(0), 0), (6, 10), jnp.float32),
                            (2, 3, 10))
    assert _same(layer.kernel.value, reference)


def test_linear_parameters_are_the_plain_call_bits():
    layer = nnx.Linear(32, 10, rngs=nnx.Rngs(5))
    root = jax.random.key(5)
    kernel = jinit.lecun_normal()(jax.random.fold_in(root, 0), (32, 10), jnp.float32)
    bias = jinit.zeros(jax.random.fold_in(root, 1), (10,), jnp.float32)
    assert _same(layer.kernel.value, kernel) and _same(layer.bias.value, bias)


def test_layers_of_a_small_model_compile_one_sampler():
    if not jax.config.jax_threefry_partitionable:
        pytest.skip("size buckets need jax_threefry_partitionable (the default)")
    jax.clear_caches()
    with compilations() as names:
        nnx.Linear(64, 32, rngs=nnx.Rngs(0))
        nnx.Linear(32, 10, rngs=nnx.Rngs(1))
    assert names == ["jit(_truncated_normal)"]
    with compilations() as names:
        nnx.Linear(32, 10, rngs=nnx.Rngs(2))
        nnx.Linear(100, 7, rngs=nnx.Rngs(3))
        nnx.LayerNorm(10, rngs=nnx.Rngs(4))
    assert names == []


def test_under_jit_the_initializer_itself_is_traced():
    init = INITIALIZERS["lecun_normal"]
    calls = []

    def traced(key):
        calls.append(type(key))
        return init_value(init, key, (32, 10), jnp.float32)

    got = jax.jit(traced)(_key())
    assert issubclass(calls[0], jax.core.Tracer)
    assert np.asarray(got).tobytes() == np.asarray(jax.jit(init, static_argnums=(1, 2))(
        _key(), (32, 10), jnp.float32)).tobytes()


def test_abstract_keys_under_eval_shape():
    init = INITIALIZERS["he_normal"]
    out = jax.eval_shape(lambda k: init_value(init, k, (7, 5), jnp.float32), _key())
    assert out.shape == (7, 5) and out.dtype == jnp.float32
    model = nnx.eval_shape(lambda: nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    assert isinstance(model.kernel.value, jax.ShapeDtypeStruct)
    assert model.kernel.value.shape == (4, 3)


def test_a_user_closure_is_called_every_time_with_its_current_values():
    scale = [1.0]
    calls = []

    def init(key, shape, dtype):
        calls.append(shape)
        return jax.random.normal(key, shape, dtype) * scale[0]

    assert not has_fast_path(init)
    first = init_value(init, _key(), (3,), jnp.float32)
    scale[0] = 2.0
    second = init_value(init, _key(), (3,), jnp.float32)
    assert calls == [(3,), (3,)]
    np.testing.assert_array_equal(np.asarray(second), 2.0 * np.asarray(first))
    layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
    assert calls[-1] == (2, 3) and layer.kernel.shape == (2, 3)


def test_a_jax_closure_is_read_at_every_call():
    init = jinit.normal(0.1)
    before = init_value(init, _key(), (4,), jnp.float32)
    cell = init.__code__.co_freevars.index("stddev")
    init.__closure__[cell].cell_contents = 0.5
    after = init_value(init, _key(), (4,), jnp.float32)
    assert _same(after, init(_key(), (4,), jnp.float32))
    assert not np.array_equal(np.asarray(before), np.asarray(after))


def test_with_partitioning_keeps_its_metadata():
    init = nnx.with_partitioning(jinit.lecun_normal(), ("a", "b"))
    assert has_fast_path(init)
    got = init_value(init, _key(), (8, 4), jnp.float32)
    expected = init(_key(), (8, 4), jnp.float32)
    assert isinstance(got, nnx.VariableMetadata)
    assert got.metadata == expected.metadata == {"out_sharding": ("a", "b")}
    assert _same(got.raw_value, expected.raw_value)


def test_a_default_device_or_a_mesh_means_the_plain_call():
    init = INITIALIZERS["lecun_normal"]
    with jax.default_device(jax.devices()[0]):
        assert _eager_init._fast_value(init, _key(), (4, 4), jnp.float32, None) is None
    mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
        assert _eager_init._fast_value(jinit.zeros, _key(), (4, 4), jnp.float32, None) is None


def test_committed_keys_and_raw_keys_mean_the_plain_call():
    init = INITIALIZERS["lecun_normal"]
    committed = jax.device_put(_key(), jax.devices()[0])
    assert _eager_init._fast_value(init, committed, (4, 4), jnp.float32, None) is None
    raw = jax.random.PRNGKey(0)
    assert _eager_init._fast_value(init, raw, (4, 4), jnp.float32, None) is None
    assert _same(init_value(init, raw, (4, 4), jnp.float32), init(raw, (4, 4), jnp.float32))


def test_subnormal_values_mean_the_plain_call():
    # XLA's CPU backend flushes subnormals to zero; numpy would keep them
    init = jinit.normal(1e-41)
    assert _eager_init._fast_value(init, _key(), (16,), jnp.float32, None) is None
    assert _same(init_value(init, _key(), (16,), jnp.float32), init(_key(), (16,), jnp.float32))


def test_invalid_settings_warn_nothing_and_give_the_plain_call_value():
    init = jinit.variance_scaling(-1.0, "fan_in", "normal")  # sqrt of a negative variance
    assert _eager_init._fast_value(init, _key(), (4, 4), jnp.float32, None) is None
    assert _same(init_value(init, _key(), (4, 4), jnp.float32), init(_key(), (4, 4), jnp.float32))
    huge = jinit.normal(1e300)  # overflows float32
    assert _eager_init._fast_value(huge, _key(), (4,), jnp.float32, None) is None


def test_errors_are_those_of_the_plain_call():
    with pytest.raises(ValueError, match="Can't compute input and output sizes"):
        init_value(jinit.lecun_normal(), _key(), (5,), jnp.float32)
    with pytest.raises(ValueError, match="invalid mode"):
        init_value(jinit.variance_scaling(1.0, "fan_wrong", "normal"), _key(), (5, 2), jnp.float32)


def test_every_mirrored_jax_function_matches_its_fingerprint():
    # A failure means the installed jax changed one of these functions: compare it with the
    # recipe in nnx/nn/_eager_init.py, then update _FINGERPRINTS.
    from jax._src.nn import initializers as jax_init

    from nnx import _eager

    got = {name: _eager.fingerprint(getattr(jax_init, name)) for name in _eager_init._FINGERPRINTS}
    assert got == _eager_init._FINGERPRINTS
    assert len(_eager_init._recipe_table()) == len(_eager_init._FINGERPRINTS)
