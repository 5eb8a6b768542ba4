"""_eager: values made on the host with the bits, dtype and placement of eager JAX ops."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jitted import compilations

import nnx
from nnx import _eager, rnglib


def _data(key):
    return np.asarray(jax.random.key_data(key))


def test_fold_in_on_host_is_jax_fold_in():
    rng = np.random.default_rng(0)
    counts = [0, 1, 2**31, 2**32 - 1, *rng.integers(0, 2**32, size=200)]
    for count in counts:
        key = jax.random.wrap_key_data(rng.integers(0, 2**32, size=2, dtype=np.uint32))
        new_key, new_count = _eager.fold_in_on_host(key, jax.device_put(np.uint32(count)))
        expected = jax.random.fold_in(key, np.uint32(count))
        np.testing.assert_array_equal(_data(new_key), _data(expected))
        assert new_key.dtype == expected.dtype and not new_key.committed
        assert new_count.dtype == jnp.uint32 and int(new_count) == (int(count) + 1) % 2**32


def test_fold_in_on_host_declines_traced_and_committed_keys():
    count = jax.device_put(np.uint32(0))
    seen = []
    jax.jit(lambda k, c: seen.append(_eager.fold_in_on_host(k, c)) or 0)(jax.random.key(0), count)
    assert seen == [None]
    committed = jax.device_put(jax.random.key(0), jax.devices()[0])
    assert _eager.fold_in_on_host(committed, count) is None
    assert _eager.fold_in_on_host(jax.random.key(0, impl="rbg"), count) is None


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1])
def test_seed_key_is_jax_random_key(seed):
    key, expected = rnglib._seed_key(seed), jax.random.key(seed)
    np.testing.assert_array_equal(_data(key), _data(expected))
    assert key.dtype == expected.dtype and key.committed == expected.committed


def test_rngs_streams_compile_nothing_and_give_jax_keys():
    jax.clear_caches()
    with compilations() as names:
        rngs = nnx.Rngs(params=3, dropout=4)
        keys = [rngs.params() for _ in range(3)] + [rngs.dropout()]
    assert names == []
    expected = [jax.random.fold_in(jax.random.key(3), c) for c in range(3)]
    expected.append(jax.random.fold_in(jax.random.key(4), 0))
    for key, ref in zip(keys, expected, strict=True):
        np.testing.assert_array_equal(_data(key), _data(ref))
    assert rngs.params.count.value.dtype == jnp.uint32 and int(rngs.params.count.value) == 3


def test_rngs_inside_jit_give_the_eager_keys():
    def draw():
        rngs = nnx.Rngs(7)
        return jax.random.key_data(rngs()), jax.random.key_data(rngs())

    eager = draw()
    traced = jax.jit(draw)()
    for a, b in zip(eager, traced, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_split_stream_is_refused_eagerly_and_folds_in_under_vmap():
    rngs = nnx.Rngs(0).split(3)
    with pytest.raises(ValueError, match="fold_in accepts a single key"):
        rngs()
    keys = jax.vmap(lambda s: s())(rngs.default)
    expected = jax.vmap(lambda k: jax.random.fold_in(k, 0))(jax.random.split(
        jax.random.fold_in(jax.random.key(0), 0), 3))
    np.testing.assert_array_equal(_data(keys), _data(expected))


def test_finite_and_normal():
    assert _eager.finite_and_normal(np.float32([0.0, 1.0, -2.5]), np.float32(3.0))
    assert not _eager.finite_and_normal(np.float32([1e-40]))
    assert not _eager.finite_and_normal(np.float32([np.nan]))
    assert not _eager.finite_and_normal(np.float64([np.inf]))


def _documented():
    def f(x):
        """Doc."""
        # a comment
        return x + 1

    return f


def _bare():
    def f(x):

        return x + 1

    return f


def _changed():
    def f(x):
        return x + 2

    return f


def test_fingerprint_ignores_docstrings_comment_lines_and_blank_lines():
    assert _eager.fingerprint(_documented()) == _eager.fingerprint(_bare())
    assert _eager.fingerprint(_bare()) != _eager.fingerprint(_changed())
    assert _eager.fingerprint(len) is None


def test_fold_in_fingerprints_match_installed_jax():
    # A failure means the installed jax changed its threefry fold_in: compare it with
    # _eager.fold_in_on_host, then update _FOLD_IN_FINGERPRINTS.
    from jax._src.random import threefry2x32

    got = {n: _eager.fingerprint(getattr(threefry2x32, n)) for n in _eager._FOLD_IN_FINGERPRINTS}
    assert got == _eager._FOLD_IN_FINGERPRINTS
    assert _eager._fold_in_mirrors_jax()
