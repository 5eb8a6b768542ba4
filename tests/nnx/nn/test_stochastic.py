import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def test_dropout_forks_a_stream_from_rngs():
    rngs = nnx.Rngs(0, dropout=1)
    d = nnx.Dropout(0.5, rngs=rngs)
    assert isinstance(d.rngs, nnx.RngStream) and d.rngs is not rngs.dropout
    assert int(rngs.dropout.count.value) == 1
    fallback = nnx.Dropout(0.5, rngs=nnx.Rngs(3))
    assert isinstance(fallback.rngs, nnx.RngStream)
    assert nnx.Dropout(0.5).rngs is None


def test_dropout_train_masks_and_scales():
    d = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((64,))
    y = np.asarray(d(x))
    assert set(np.unique(y)) == {0.0, 2.0}
    assert 10 < (y == 0).sum() < 54
    d.rate = 0.25
    y = np.asarray(d(x))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)


def test_dropout_mask_matches_bernoulli_reference():
    rngs = nnx.Rngs(dropout=5)
    d = nnx.Dropout(0.3, rngs=rngs)
    key = jax.random.fold_in(d.rngs.key.value, 0)
    x = jnp.arange(1.0, 9.0)
    keep = jax.random.bernoulli(key, 0.7, (8,))
    np.testing.assert_allclose(d(x), np.where(keep, np.asarray(x) / 0.7, 0.0), rtol=1e-6)


def test_dropout_successive_calls_differ():
    d = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((32,))
    assert not np.array_equal(d(x), d(x))
    assert int(d.rngs.count.value) == 2


def test_dropout_deterministic_and_eval_are_identity():
    x = jnp.arange(6.0)
    d = nnx.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(0))
    assert d(x) is x
    d.deterministic = False
    assert d(x, deterministic=True) is x
    model = nnx.Sequential(d)
    model.eval()
    assert d.deterministic is True and model(x) is x
    model.train()
    assert d.deterministic is False and not np.array_equal(model(x), x)


def test_dropout_rate_zero_and_one():
    x = jnp.ones((4,))
    assert nnx.Dropout(0.0)(x) is x
    np.testing.assert_array_equal(nnx.Dropout(1.0)(x), np.zeros(4))
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got 1.5"):
        nnx.Dropout(1.5)


def test_dropout_without_rngs_raises():
    d = nnx.Dropout(0.5)
    with pytest.raises(
        ValueError, match="`deterministic` is False, but no `rngs` argument was provided to Dropout"
    ):
        d(jnp.ones((3,)))


def test_dropout_call_rngs_override():
    d = nnx.Dropout(0.5)
    x = jnp.ones((16,))
    a = d(x, rngs=nnx.Rngs(dropout=3))
    b = d(x, rngs=nnx.Rngs(dropout=3))
    np.testing.assert_array_equal(a, b)
    key = jax.random.key(4)
    np.testing.assert_array_equal(
        d(x, rngs=key), np.where(jax.random.bernoulli(key, 0.5, (16,)), 2.0, 0.0)
    )


def test_dropout_broadcast_dims():
    d = nnx.Dropout(0.5, broadcast_dims=(0,), rngs=nnx.Rngs(dropout=1))
    y = np.asarray(d(jnp.ones((5, 16))))
    assert (y == y[0]).all()


def test_dropout_masks_differ_across_nnx_jit_calls():
    d = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    f = nnx.jit(lambda m, x: m(x))
    x = jnp.ones((32,))
    a, b = f(d, x), f(d, x)
    assert not np.array_equal(a, b)
    assert int(d.rngs.count.value) == 2


def test_dropout_set_view():
    d = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    d.set_view(deterministic=True)
    x = jnp.ones((4,))
    assert d(x) is x
    d.set_view()
    assert d.deterministic is True
