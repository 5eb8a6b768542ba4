import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jitted import build, jit_call

import nnx
from nnx.nn.attention import (
    MultiHeadAttention,
    combine_masks,
    dot_product_attention,
    dot_product_attention_weights,
    make_attention_mask,
    make_causal_mask,
)


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _reference_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d)) V per head, written with numpy loops over batch and heads."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, lq, h, d = q.shape
    out = np.zeros((b, lq, h, v.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            logits = q[bi, :, hi] @ k[bi, :, hi].T / np.sqrt(d)
            if mask is not None:
                m = np.broadcast_to(mask, (b, h, lq, k.shape[1]))[bi, hi]
                logits = np.where(m > 0, logits, -1e30)
            out[bi, :, hi] = _softmax(logits) @ v[bi, :, hi]
    return out


def _qkv(seed=0, b=2, lq=4, lk=5, h=2, d=3):
    r = np.random.default_rng(seed)
    return (
        r.normal(size=(b, lq, h, d)).astype(np.float32),
        r.normal(size=(b, lk, h, d)).astype(np.float32),
        r.normal(size=(b, lk, h, d)).astype(np.float32),
    )


def test_dot_product_attention_matches_explicit_softmax():
    q, k, v = _qkv()
    out = dot_product_attention(q, k, v)
    assert out.shape == (2, 4, 2, 3)
    np.testing.assert_allclose(out, _reference_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_dot_product_attention_with_mask_and_bias():
    q, k, v = _qkv(1)
    mask = np.random.default_rng(2).integers(0, 2, size=(2, 1, 4, 5))
    mask[..., 0] = 1  # every query sees at least one key
    out = dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out, _reference_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
    # a bias of -inf-like values acts like a mask
    bias = np.where(mask > 0, 0.0, -1e9).astype(np.float32)
    np.testing.assert_allclose(dot_product_attention(q, k, v, bias=bias), out, atol=1e-5)


def test_attention_weights_dropout_scales_kept_entries():
    q, k, _ = _qkv(3)
    plain = dot_product_attention_weights(q, k)
    dropped = dot_product_attention_weights(
        q, k, dropout_rng=jax.random.key(0), dropout_rate=0.5, deterministic=False
    )
    kept = np.asarray(dropped) != 0
    np.testing.assert_allclose(np.asarray(dropped)[kept], 2 * np.asarray(plain)[kept], rtol=1e-6)
    # broadcast_dropout shares the mask over batch and heads
    assert (kept == kept[:1, :1]).all()
    assert 0 < kept.mean() < 1


def test_dot_product_attention_shape_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="key and value lengths"):
        dot_product_attention(q, k, v[:, :3])


def test_masks_shapes_and_values():
    causal = make_causal_mask(jnp.zeros((2, 4)))
    assert causal.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(causal[0, 0], np.tril(np.ones((4, 4))))
    tokens = jnp.array([[3, 1, 0]])
    pad = make_attention_mask(tokens > 0, tokens > 0, extra_batch_dims=1)
    assert pad.shape == (1, 1, 1, 3, 3)
    np.testing.assert_array_equal(pad[0, 0, 0], np.outer([1, 1, 0], [1, 1, 0]))
    combined = combine_masks(causal[:1, :, :3, :3], pad[0], None)
    np.testing.assert_array_equal(
        combined[0, 0], np.tril(np.ones((3, 3))) * np.outer([1, 1, 0], [1, 1, 0])
    )
    assert combine_masks(None, None) is None


def _projections(mha, x):
    def proj(layer):
        return np.einsum("bld,dhk->blhk", x, layer.kernel.value) + np.asarray(layer.bias.value)

    return proj(mha.query), proj(mha.key), proj(mha.value)


def test_multihead_attention_matches_reference():
    x = np.random.default_rng(4).normal(size=(2, 5, 8)).astype(np.float32)
    mha = build(lambda: MultiHeadAttention(2, 8, qkv_features=6, out_features=7, rngs=nnx.Rngs(0)))
    assert mha.query.kernel.shape == (8, 2, 3)
    assert mha.out.kernel.shape == (2, 3, 7)
    mask = make_causal_mask(x[..., 0])
    y = jit_call(mha, x, mask=mask)
    q, k, v = _projections(mha, x)
    attended = _reference_attention(q, k, v, np.asarray(mask))
    expected = np.einsum("blhk,hko->blo", attended, mha.out.kernel.value) + mha.out.bias.value
    assert y.shape == (2, 5, 7)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_decode_token_by_token_equals_full_causal_attention():
    x = np.random.default_rng(5).normal(size=(2, 5, 8)).astype(np.float32)
    mha = build(lambda: MultiHeadAttention(2, 8, decode=False, rngs=nnx.Rngs(0)))
    full = jit_call(mha, x, mask=make_causal_mask(x[..., 0]))
    mha.init_cache(x.shape)
    assert isinstance(mha.cached_key, nnx.Cache) and mha.cached_key.shape == (2, 5, 2, 4)
    graphdef, state = nnx.split(mha)

    @jax.jit
    def decode_step(state, token):
        m = nnx.merge(graphdef, state)
        return m(token, decode=True), nnx.state(m)

    steps = []
    for t in range(x.shape[1]):
        y, state = decode_step(state, x[:, t : t + 1])
        steps.append(y)
    nnx.update(mha, state)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(mha.cache_index.value) == 5


def test_decode_inside_jax_scan_with_split_merge():
    x = np.random.default_rng(6).normal(size=(1, 4, 4)).astype(np.float32)
    mha = build(lambda: MultiHeadAttention(1, 4, decode=True, rngs=nnx.Rngs(0)))
    full = jit_call(mha, x, mask=make_causal_mask(x[..., 0]), decode=False)
    mha.init_cache(x.shape)
    graphdef, state = nnx.split(mha)

    def step(state, token):
        m = nnx.merge(graphdef, state)
        y = m(token[:, None])
        return nnx.state(m), y[:, 0]

    state, ys = jax.lax.scan(step, state, jnp.swapaxes(x, 0, 1))
    nnx.update(mha, state)
    np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1), full, rtol=1e-5, atol=1e-5)
    assert int(mha.cache_index.value) == 4


def test_decode_without_init_cache_raises():
    mha = MultiHeadAttention(2, 8, decode=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="init_cache"):
        mha(jnp.ones((1, 1, 8)))


def test_wrong_feature_size_names_layer_and_sizes():
    mha = MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"MultiHeadAttention expected inputs with 8 .* got 5"):
        mha(jnp.ones((1, 3, 5)))


def test_dropout_follows_train_and_eval_modes():
    x = jnp.asarray(np.random.default_rng(7).normal(size=(1, 6, 4)), jnp.float32)
    mha = build(lambda: MultiHeadAttention(2, 4, dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1)))
    with pytest.raises(ValueError, match="deterministic"):
        mha(x)
    mha.eval()
    assert mha.deterministic is True
    a, b = jit_call(mha, x), jit_call(mha, x)
    np.testing.assert_array_equal(a, b)
    mha.train()
    assert mha.deterministic is False
    c, d = jit_call(mha, x), jit_call(mha, x)
    assert not np.allclose(c, d)
    assert not np.allclose(c, a)


def test_sow_weights_records_intermediate():
    x = jnp.ones((1, 3, 4))
    mha = build(lambda: MultiHeadAttention(2, 4, rngs=nnx.Rngs(0)))
    jit_call(mha, x, sow_weights=True)
    (weights,) = mha.attention_weights.value
    assert isinstance(mha.attention_weights, nnx.Intermediate)
    assert weights.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_normalize_qk_and_cross_attention_shapes():
    mha = build(
        lambda: MultiHeadAttention(
            2, 4, out_features=3, in_kv_features=6, normalize_qk=True, rngs=nnx.Rngs(0)
        )
    )
    y = jit_call(mha, jnp.ones((2, 3, 4)), jnp.ones((2, 5, 6)))
    assert y.shape == (2, 3, 3)
    assert mha.query_ln.scale.shape == (2,)
    assert isinstance(mha.key_ln.scale, nnx.Param)


def test_grouped_query_attention_matches_repeated_kv_heads():
    r = np.random.default_rng(8)
    q = r.normal(size=(2, 3, 4, 5)).astype(np.float32)
    k, v = (r.normal(size=(2, 6, 2, 5)).astype(np.float32) for _ in range(2))
    out = dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 4, 5)
    # query heads 0, 1 use key head 0; query heads 2, 3 use key head 1
    expected = _reference_attention(q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    weights = dot_product_attention_weights(q, k)
    assert weights.shape == (2, 4, 3, 6)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of key heads "
                       r"\(3\)"):
        dot_product_attention(q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2))
    with pytest.raises(ValueError, match="query and key depths must match"):
        dot_product_attention(q, k[..., :4], v)


def test_is_causal_equals_lower_triangular_mask():
    q, k, v = _qkv(9, lq=3, lk=5)
    tril = np.tril(np.ones((3, 5)))
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, is_causal=True),
        _reference_attention(q, k, v, tril), rtol=1e-5, atol=1e-5,
    )
    padding = np.ones((2, 1, 3, 5))
    padding[..., 1] = 0
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, mask=padding, is_causal=True),
        _reference_attention(q, k, v, tril * padding), rtol=1e-5, atol=1e-5,
    )


def test_multihead_attention_with_kv_heads_decodes_like_causal_full_call():
    x = np.random.default_rng(10).normal(size=(1, 4, 8)).astype(np.float32)
    mha = build(lambda: MultiHeadAttention(4, 8, num_kv_heads=2, rngs=nnx.Rngs(0)))
    assert mha.query.kernel.shape == (8, 4, 2)
    assert mha.key.kernel.shape == mha.value.kernel.shape == (8, 2, 2)
    full = jit_call(mha, x, is_causal=True)
    q, k, v = _projections(mha, x)
    attended = _reference_attention(
        q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2), np.tril(np.ones((4, 4)))
    )
    expected = np.einsum("blhk,hko->blo", attended, mha.out.kernel.value) + mha.out.bias.value
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-5)
    mha.init_cache(x.shape)
    assert mha.cached_key.shape == (1, 4, 2, 2)
    steps = [jit_call(mha, x[:, t : t + 1], decode=True) for t in range(4)]
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads "
                       r"\(3\)"):
        MultiHeadAttention(4, 8, num_kv_heads=3, rngs=nnx.Rngs(0))


def test_decode_with_x64_enabled():
    with jax.enable_x64(True):
        mha = MultiHeadAttention(2, 4, decode=True, rngs=nnx.Rngs(0))
        mha.init_cache((1, 3, 4), dtype=jnp.float64)
        y = mha(jnp.ones((1, 1, 4), jnp.float64))
        assert y.shape == (1, 1, 4) and int(mha.cache_index.value) == 1


def test_keep_rngs_metadata_and_set_view():
    mha = MultiHeadAttention(
        2, 4, dropout_rate=0.5, keep_rngs=False, deterministic=False,
        kernel_metadata={"tag": "qkv"}, out_bias_metadata={"tag": "ob"},
        query_ln_scale_metadata={"tag": "qln"}, normalize_qk=True, rngs=nnx.Rngs(0),
    )
    assert mha.rngs is None
    assert mha.query.kernel.get_metadata("tag") == "qkv"
    assert mha.out.kernel.get_metadata("tag") == "qkv"  # out_kernel_metadata defaults to it
    assert mha.out.bias.get_metadata("tag") == "ob" and not mha.key.bias.has_metadata("tag")
    assert mha.query_ln.scale.get_metadata("tag") == "qln"
    x = jnp.ones((1, 3, 4))
    with pytest.raises(ValueError, match="there is no RNG"):
        mha(x)
    assert mha(x, rngs=nnx.Rngs(dropout=1)).shape == (1, 3, 4)
    mha.set_view(deterministic=True, decode=True, batch_size=1, max_length=3)
    assert mha.deterministic is True and mha.decode is True
    assert mha.cached_key.shape == (1, 3, 2, 2)
