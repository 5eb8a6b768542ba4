import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def test_linear_shapes_and_output_match_numpy():
    layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (3, 4) and layer.bias.shape == (4,)
    assert isinstance(layer.kernel, nnx.Param) and isinstance(layer.bias, nnx.Param)
    assert (layer.in_features, layer.out_features) == (3, 4)
    np.testing.assert_array_equal(layer.bias.value, np.zeros(4))
    layer.bias.value = jnp.arange(4.0)
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    expected = x @ np.asarray(layer.kernel.value) + np.arange(4.0)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-6)


def test_linear_default_init_is_lecun_normal_from_params_stream():
    layer = nnx.Linear(3, 4, rngs=nnx.Rngs(params=7))
    key = jax.random.fold_in(jax.random.key(7), 0)
    expected = jax.nn.initializers.lecun_normal()(key, (3, 4), jnp.float32)
    np.testing.assert_array_equal(layer.kernel.value, expected)


def test_linear_batch_dims_and_no_bias():
    layer = nnx.Linear(3, 2, use_bias=False, rngs=nnx.Rngs(0))
    assert layer.bias is None
    assert "bias" not in nnx.state(layer)
    x = jnp.ones((2, 5, 3))
    y = layer(x)
    assert y.shape == (2, 5, 2)
    np.testing.assert_allclose(y[1, 4], jnp.sum(layer.kernel.value, axis=0), rtol=1e-6)


def test_linear_dtype_and_param_dtype():
    layer = nnx.Linear(3, 2, dtype=jnp.bfloat16, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert layer.kernel.dtype == jnp.float16 and layer.bias.dtype == jnp.float16
    assert layer(jnp.ones((1, 3), jnp.float32)).dtype == jnp.bfloat16
    promoted = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    assert promoted(jnp.ones((1, 3), jnp.bfloat16)).dtype == jnp.float32
    assert promoted(jnp.ones((1, 3), jnp.int32)).dtype == jnp.float32


def test_linear_custom_initializers():
    layer = nnx.Linear(
        2, 3, kernel_init=nnx.initializers.ones, bias_init=nnx.initializers.constant(0.5),
        rngs=nnx.Rngs(0),
    )
    np.testing.assert_array_equal(layer(jnp.ones((1, 2))), np.full((1, 3), 2.5))


def test_linear_wrong_feature_size_raises():
    layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as e:
        layer(jnp.ones((2, 4)))
    assert str(e.value) == (
        "Linear expected inputs with 3 features in the last axis, got 4 (input shape (2, 4))"
    )


def test_linear_feature_check_happens_at_trace_time():
    layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Linear expected inputs with 3 features"):
        jax.eval_shape(lambda x: layer(x), jax.ShapeDtypeStruct((2, 5), jnp.float32))


def test_linear_general_contracts_two_axes():
    layer = nnx.LinearGeneral((2, 3), (4, 5), axis=(-2, -1), rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (2, 3, 4, 5) and layer.bias.shape == (4, 5)
    layer.bias.value = jnp.ones((4, 5))
    x = np.random.RandomState(0).randn(7, 2, 3).astype(np.float32)
    expected = np.einsum("bij,ijkl->bkl", x, np.asarray(layer.kernel.value)) + 1.0
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_linear_general_batch_axis():
    layer = nnx.LinearGeneral(3, 2, axis=-1, batch_axis={0: 4}, rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (4, 3, 2) and layer.bias.shape == (4, 2)
    layer.bias.value = jnp.arange(8.0).reshape(4, 2)
    x = np.random.RandomState(1).randn(4, 5, 3).astype(np.float32)
    k = np.asarray(layer.kernel.value)
    expected = np.einsum("bti,bio->bto", x, k) + np.arange(8.0).reshape(4, 1, 2)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_linear_general_wrong_features():
    layer = nnx.LinearGeneral((2, 3), 4, axis=(-2, -1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"LinearGeneral expected inputs with \(2, 3\) features "
                       r"in axes \(-2, -1\), got \(3, 3\) \(input shape \(1, 3, 3\)\)"):
        layer(jnp.ones((1, 3, 3)))


def test_einsum_with_bias():
    layer = nnx.Einsum("bti,ihd->bthd", (3, 2, 4), (2, 4), rngs=nnx.Rngs(0))
    assert layer.kernel.shape == (3, 2, 4) and layer.bias.shape == (2, 4)
    layer.bias.value = jnp.arange(8.0).reshape(2, 4)
    x = np.random.RandomState(2).randn(2, 5, 3).astype(np.float32)
    expected = np.einsum("bti,ihd->bthd", x, np.asarray(layer.kernel.value))
    expected = expected + np.arange(8.0).reshape(2, 4)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert nnx.Einsum("ij,jk->ik", (3, 2), rngs=nnx.Rngs(0)).bias is None


def test_einsum_errors():
    with pytest.raises(ValueError, match="two operands and an explicit output"):
        nnx.Einsum("ij->i", (3,), rngs=nnx.Rngs(0))
    layer = nnx.Einsum("bi,io->bo", (3, 2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Einsum expected inputs with 3 features in the axis "
                       r"labelled 'i'.*got 5 \(input shape \(1, 5\)\)"):
        layer(jnp.ones((1, 5)))


def test_embed_lookup_and_attend():
    embed = nnx.Embed(5, 3, rngs=nnx.Rngs(0))
    assert embed.embedding.shape == (5, 3)
    table = np.asarray(embed.embedding.value)
    ids = jnp.array([[0, 4], [2, 2]])
    np.testing.assert_array_equal(embed(ids), table[np.asarray(ids)])
    q = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(embed.attend(q), q @ table.T, rtol=1e-6)
    with pytest.raises(ValueError, match="Embed expects integer ids"):
        embed(jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"Embed.attend expected inputs with 3 features in the "
                       r"last axis, got 2"):
        embed.attend(jnp.ones((1, 2)))


def test_embed_dtypes():
    embed = nnx.Embed(4, 2, dtype=jnp.bfloat16, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert embed.embedding.dtype == jnp.float16
    assert embed(jnp.array([1, 2])).dtype == jnp.bfloat16
    assert nnx.Embed(4, 2, rngs=nnx.Rngs(0))(jnp.array([1])).dtype == jnp.float32


def test_linear_under_nnx_jit_and_jax_grad():
    layer = nnx.Linear(2, 1, rngs=nnx.Rngs(0))

    @nnx.jit
    def loss(m, x):
        return jnp.sum(m(x))

    x = jnp.array([[1.0, 2.0]])
    np.testing.assert_allclose(loss(layer, x), jnp.sum(x @ layer.kernel.value), rtol=1e-6)
    graphdef, params = nnx.split(layer)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x)))(params)
    np.testing.assert_allclose(grads["kernel"].value, x.T, rtol=1e-6)
    np.testing.assert_allclose(grads["bias"].value, [1.0], rtol=1e-6)


def _bf16(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.bfloat16)


def test_linear_preferred_element_type_matches_lax():
    layer = nnx.Linear(
        3, 2, param_dtype=jnp.bfloat16, preferred_element_type=jnp.float32, rngs=nnx.Rngs(0)
    )
    x = _bf16((4, 3))
    y = layer(x)
    assert y.dtype == jnp.float32
    expected = jax.lax.dot_general(
        x, layer.kernel.value, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    np.testing.assert_array_equal(y, expected + layer.bias.value)
    assert nnx.Linear(3, 2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(x).dtype == jnp.bfloat16


def test_linear_general_and_einsum_preferred_element_type():
    general = nnx.LinearGeneral(
        3, (2, 2), param_dtype=jnp.bfloat16, use_bias=False, preferred_element_type=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    x = _bf16((4, 3))
    expected = jnp.einsum("bi,ijk->bjk", x, general.kernel.value, preferred_element_type=jnp.float32)
    np.testing.assert_array_equal(general(x), expected)
    einsum = nnx.Einsum(
        "bi,io->bo", (3, 2), param_dtype=jnp.bfloat16, preferred_element_type=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    y = einsum(x)
    assert y.dtype == jnp.float32
    expected = jnp.einsum("bi,io->bo", x, einsum.kernel.value, preferred_element_type=jnp.float32)
    np.testing.assert_array_equal(y, expected)


def test_promote_dtype_receives_inputs_kernel_and_bias():
    seen = []

    def keep_dtypes(args, *, dtype=None):
        seen.append((len(args), dtype))
        return args

    layer = nnx.Linear(2, 3, dtype=jnp.float16, promote_dtype=keep_dtypes, rngs=nnx.Rngs(0))
    y = layer(jnp.ones((1, 2), jnp.float32))
    assert seen == [(3, jnp.float16)]
    assert y.dtype == jnp.float32  # nothing was cast


def test_custom_dot_general_and_dot_general_cls():
    def doubled(lhs, rhs, dims, precision=None, **kwargs):
        return 2 * jax.lax.dot_general(lhs, rhs, dims, precision=precision, **kwargs)

    layer = nnx.Linear(2, 3, use_bias=False, dot_general=doubled, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 2))
    np.testing.assert_allclose(layer(x), 2 * x @ layer.kernel.value, rtol=1e-6)

    class Tripled:
        def __call__(self, lhs, rhs, dims, precision=None, **kwargs):
            return 3 * jax.lax.dot_general(lhs, rhs, dims, precision=precision, **kwargs)

    general = nnx.LinearGeneral(2, 3, use_bias=False, dot_general_cls=Tripled, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(general(x), 3 * x @ general.kernel.value, rtol=1e-6)


def test_param_metadata_keywords():
    layer = nnx.Linear(
        2, 3, kernel_metadata={"tag_a": 1}, bias_metadata={"tag_b": 2}, rngs=nnx.Rngs(0)
    )
    assert layer.kernel.get_metadata("tag_a") == 1 and layer.bias.get_metadata("tag_b") == 2
    assert not layer.kernel.has_metadata("tag_b")
    embed = nnx.Embed(3, 2, embedding_metadata={"tag": "emb"}, rngs=nnx.Rngs(0))
    assert embed.embedding.get_metadata("tag") == "emb"
    with pytest.raises(TypeError, match="Linear: kernel_metadata must be a mapping"):
        nnx.Linear(2, 3, kernel_metadata=[("a", 1)], rngs=nnx.Rngs(0))


def test_linear_general_reshapes_initializer_metadata():
    init = nnx.with_metadata(nnx.initializers.lecun_normal(), tag_a="k")
    layer = nnx.LinearGeneral(
        (2, 3), 4, axis=(-2, -1), kernel_init=init, kernel_metadata={"tag_b": 1},
        rngs=nnx.Rngs(0),
    )
    assert layer.kernel.shape == (2, 3, 4)
    assert layer.kernel.get_metadata("tag_a") == "k" and layer.kernel.get_metadata("tag_b") == 1


def test_einsum_bias_follows_kernel_axes_of_the_output():
    # 'e' and 'f' are shared by input and kernel; the bias spans every output axis the kernel has
    layer = nnx.Einsum("defab,bcef->adefc", (4, 5, 2, 3), (2, 3, 5), rngs=nnx.Rngs(0))
    layer.bias.value = jnp.arange(30.0).reshape(2, 3, 5)
    x = np.random.RandomState(3).randn(6, 2, 3, 2, 4).astype(np.float32)
    expected = np.einsum("defab,bcef->adefc", x, np.asarray(layer.kernel.value))
    expected = expected + np.arange(30.0).reshape(1, 1, 2, 3, 5)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    ellipsis = nnx.Einsum("d...ab,bc...->ad...c", (4, 5, 2, 3), (2, 3, 5), rngs=nnx.Rngs(0))
    ellipsis.kernel.value, ellipsis.bias.value = layer.kernel.value, layer.bias.value
    np.testing.assert_allclose(ellipsis(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"Einsum: bias of shape \(4,\) does not fit"):
        nnx.Einsum("ij,jk->ik", (3, 2), 4, rngs=nnx.Rngs(0))(jnp.ones((1, 3)))


def test_einsum_op_and_int_shapes():
    calls = []

    def traced_einsum(eq, *operands, **kwargs):
        calls.append(eq)
        return jnp.einsum(eq, *operands, **kwargs)

    layer = nnx.Einsum("ab,bc->ac", (3, 4), 4, einsum_op=traced_einsum, rngs=nnx.Rngs(0))
    assert layer.bias_shape == (4,)
    assert layer(jnp.ones((2, 3))).shape == (2, 4) and calls == ["ab,bc->ac"]


def test_embed_out_of_range_negative_and_single_row():
    embed = nnx.Embed(3, 2, rngs=nnx.Rngs(0))
    table = np.asarray(embed.embedding.value)
    y = np.asarray(embed(jnp.array([0, -1, 3, -4])))
    np.testing.assert_array_equal(y[:2], table[[0, -1]])
    assert np.isnan(y[2:]).all()
    single = nnx.Embed(1, 2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(
        single(jnp.array([[0, 5]])), np.broadcast_to(single.embedding.value, (1, 2, 2))
    )
    half = nnx.Embed(3, 2, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
    assert half.dtype == jnp.float16 and half.attend(jnp.ones((1, 2))).dtype == jnp.float16


@pytest.mark.parametrize("size", [-1, 0, 2.5, True])
def test_bad_sizes_name_the_layer_and_the_parameter(size):
    with pytest.raises(ValueError, match=r"Linear: its kernel would have shape .* must be positive integers"):
        nnx.Linear(size, 3, rngs=nnx.Rngs(0))
    if size in (-1, 0):
        with pytest.raises(ValueError, match=r"Conv: its kernel would have shape"):
            nnx.Conv(2, size, kernel_size=3, rngs=nnx.Rngs(0))
