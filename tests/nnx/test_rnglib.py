"""Rngs: named streams, fallback to default, counters as State, fork/split, reseed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def _data(key):
    return np.asarray(jax.random.key_data(key))


def _expected(seed, count):
    return _data(jax.random.fold_in(jax.random.key(seed), count))


def test_default_stream_from_a_single_seed():
    rngs = nnx.Rngs(0)
    np.testing.assert_array_equal(_data(rngs()), _expected(0, 0))
    np.testing.assert_array_equal(_data(rngs.default()), _expected(0, 1))
    assert int(rngs.default.count.value) == 2


def test_named_streams_by_attribute_and_item():
    rngs = nnx.Rngs(params=0, dropout=1)
    np.testing.assert_array_equal(_data(rngs.params()), _expected(0, 0))
    np.testing.assert_array_equal(_data(rngs["dropout"]()), _expected(1, 0))
    assert sorted(rngs) == ["dropout", "params"] and len(rngs) == 2
    assert "params" in rngs and "default" not in rngs


def test_successive_keys_differ_and_counts_advance():
    rngs = nnx.Rngs(params=3)
    keys = [_data(rngs.params()) for _ in range(3)]
    assert not np.array_equal(keys[0], keys[1]) and not np.array_equal(keys[1], keys[2])
    assert int(rngs.params.count.value) == 3
    assert rngs.params.key.value.shape == ()


def test_missing_stream_falls_back_to_default():
    rngs = nnx.Rngs(5, params=0)
    np.testing.assert_array_equal(_data(rngs.dropout()), _expected(5, 0))
    np.testing.assert_array_equal(_data(rngs["other"]()), _expected(5, 1))
    assert int(rngs.params.count.value) == 0


def test_missing_stream_without_default_names_stream_and_existing_ones():
    rngs = nnx.Rngs(params=0, dropout=1)
    with pytest.raises(AttributeError, match=r"'noise'.*\['dropout', 'params'\]"):
        rngs.noise()
    with pytest.raises(KeyError, match=r"'noise'.*\['dropout', 'params'\]"):
        rngs["noise"]
    with pytest.raises(AttributeError, match="'default'"):
        rngs()


def test_seed_may_be_a_key():
    rngs = nnx.Rngs(jax.random.key(4), raw=jax.random.PRNGKey(4))
    np.testing.assert_array_equal(_data(rngs()), _expected(4, 0))
    np.testing.assert_array_equal(_data(rngs.raw()), _expected(4, 0))
    with pytest.raises(TypeError, match="int seed or a JAX key"):
        nnx.Rngs("seed")


def test_keys_and_counts_are_variables_in_the_state():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.rngs = rngs

    state = nnx.state(Net(nnx.Rngs(params=0, dropout=1)))
    assert type(state.rngs.params.key) is nnx.RngKey
    assert type(state.rngs.params.count) is nnx.RngCount
    assert state.rngs.dropout.count.tag == "dropout"
    paths = ["/".join(p) for p, _ in nnx.state(Net(nnx.Rngs(0)), nnx.RngCount).flat_state()]
    assert paths == ["rngs/default/count"]


def test_count_moves_with_split_and_update():
    rngs = nnx.Rngs(params=0)
    graphdef, state = nnx.split(rngs)

    @jax.jit
    def draw(state):
        inner = nnx.merge(graphdef, state)
        key = inner.params()
        return key, nnx.state(inner)

    key, new_state = draw(state)
    np.testing.assert_array_equal(_data(key), _expected(0, 0))
    assert int(rngs.params.count.value) == 0
    nnx.update(rngs, new_state)
    assert int(rngs.params.count.value) == 1
    np.testing.assert_array_equal(_data(rngs.params()), _expected(0, 1))


def test_fork_gives_independent_streams():
    rngs = nnx.Rngs(params=0)
    forked = rngs.fork()
    assert int(rngs.params.count.value) == 1  # one key drawn to seed the fork
    assert int(forked.params.count.value) == 0
    assert not np.array_equal(_data(forked.params()), _data(rngs.params()))


def test_fork_and_split_shapes():
    rngs = nnx.Rngs(params=0, dropout=1)
    forked = rngs.fork(split=4)
    assert forked.params.key.value.shape == (4,)
    assert forked.params.count.value.shape == (4,)
    split = rngs.split((2, 3))
    assert split.dropout.key.value.shape == (2, 3)
    stream = nnx.RngStream(0, tag="s").split(5)
    assert stream.key.value.shape == (5,) and stream.tag == "s"
    rows = _data(forked.params.key.value)
    assert len({tuple(r) for r in rows}) == 4  # distinct per-row keys


def test_reseed_resets_key_and_count():
    class Net(nnx.Module):
        def __init__(self):
            self.rngs = nnx.Rngs(params=0, dropout=1)

    net = Net()
    net.rngs.dropout()
    net.rngs.dropout()
    net.rngs.params()
    nnx.reseed(net, dropout=9)
    assert int(net.rngs.dropout.count.value) == 0
    np.testing.assert_array_equal(_data(net.rngs.dropout()), _expected(9, 0))
    assert int(net.rngs.params.count.value) == 1  # untouched


def test_sampler_shortcuts_use_the_stream():
    rngs = nnx.Rngs(0)
    x = rngs.normal((3,))
    expected = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), (3,))
    np.testing.assert_array_equal(x, expected)
    assert rngs.default.uniform((2, 2)).shape == (2, 2)
    assert int(rngs.default.count.value) == 2


def test_rngs_is_a_pytree():
    rngs = nnx.Rngs(params=0)
    leaves = jax.tree.leaves(rngs)
    assert len(leaves) == 2
    out = jax.jit(lambda r: r.params())(rngs)
    np.testing.assert_array_equal(_data(out), _expected(0, 0))
    mapped = jax.tree.map(lambda x: x, rngs)
    assert type(mapped) is nnx.Rngs and type(mapped.params) is nnx.RngStream
    assert jnp.issubdtype(mapped.params.key.value.dtype, jax.dtypes.prng_key)
