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
    # the new key is the first key a fresh nnx.Rngs(dropout=9) hands out, as in Flax
    first = jax.random.fold_in(jax.random.key(9), 0)
    np.testing.assert_array_equal(_data(net.rngs.dropout.key.value), _data(first))
    np.testing.assert_array_equal(_data(net.rngs.dropout()), _data(jax.random.fold_in(first, 0)))
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


def test_initializer_methods_draw_a_fresh_key():
    rngs = nnx.Rngs(0, params=1)
    rngs.normal((2,))  # count 0 of the default stream
    got = rngs.lecun_normal()((2, 3))
    want = jax.nn.initializers.lecun_normal()(jax.random.fold_in(jax.random.key(0), 1), (2, 3))
    np.testing.assert_allclose(got, want)
    got = rngs.params.glorot_uniform(in_axis=0)((3, 2))
    want = jax.nn.initializers.glorot_uniform(in_axis=0)(
        jax.random.fold_in(jax.random.key(1), 0), (3, 2))
    np.testing.assert_allclose(got, want)


def test_broadcast_repeats_one_key():
    stream = nnx.RngStream(0, tag="params").broadcast((2, 3))
    assert stream.key.shape == (2, 3) and stream.count.shape == (2, 3)
    rows = _data(stream.key[...]).reshape(6, -1)
    assert len({tuple(r) for r in rows}) == 1
    rngs = nnx.Rngs(params=1, dropout=2).broadcast({"params": 5, "dropout": None})
    assert rngs.params.key.shape == (5,) and rngs.dropout.key.shape == ()


def test_rngs_from_a_mapping_and_from_streams():
    base = nnx.Rngs(params=3)
    rngs = nnx.Rngs({"params": base.params}, dropout=4)
    assert rngs.params is not base.params
    np.testing.assert_array_equal(_data(rngs.params.key[...]), _data(base.params.key[...]))
    with pytest.raises(AttributeError, match="No RngStream named 'other'"):
        nnx.Rngs(params=0).other()


@pytest.mark.parametrize("graph", [True, False])
def test_with_rngs_rules(graph):
    rngs = nnx.Rngs(params=0, dropout=1, noise=2)
    new = nnx.with_rngs(rngs, split={"params": 4, ...: (2, 3)}, graph=graph, graph_updates=False)
    assert new.params.key.shape == (4,) and new.noise.key.shape == (2, 3)
    assert rngs.params.key.shape == () and int(rngs.params.count[...]) == 1  # one key consumed
    new = nnx.with_rngs(rngs, split={"params": 4}, fork=..., graph=graph, graph_updates=False)
    assert new.params.key.shape == (4,) and new.dropout.key.shape == ()
    assert not np.array_equal(_data(new.dropout.key[...]), _data(rngs.dropout.key[...]))
    with pytest.raises(ValueError, match="multiple rules"):
        nnx.with_rngs(rngs, split={"params": 4}, fork="params", graph=graph, graph_updates=False)
    tree = {"a": nnx.RngStream(0, tag="params")}
    assert nnx.with_rngs(tree, broadcast=3, graph=graph, graph_updates=False)["a"].key.shape == (3,)

    @nnx.with_rngs(split=2, graph=graph, graph_updates=False)
    def shapes(r):
        return r.params.key.shape

    assert shapes(rngs) == (2,)
    with pytest.raises(NotImplementedError, match="graph_updates=True"):
        nnx.with_rngs(rngs, split=2, graph=True, graph_updates=True)


def test_fork_rngs_in_place_with_backups_or_as_a_copy():
    rngs = nnx.Rngs(params=0)
    before = _data(rngs.params.key[...])
    with nnx.fork_rngs(rngs, graph=True, graph_updates=True):
        assert not np.array_equal(_data(rngs.params.key[...]), before)
    np.testing.assert_array_equal(_data(rngs.params.key[...]), before)
    copy = nnx.fork_rngs(rngs, split=3, graph=False)
    assert copy.params.key.shape == (3,) and rngs.params.key.shape == ()


def test_reseed_reproduces_dropout_masks_and_checks_shapes():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.dropout = nnx.Dropout(0.5, deterministic=False, rngs=rngs)

    model = Model(nnx.Rngs(dropout=42))
    x = jnp.ones((1, 8))
    y1 = model.dropout(x)
    nnx.reseed(model, dropout=42)
    np.testing.assert_array_equal(model.dropout(x), y1)
    model.dropout.rngs = nnx.RngStream(jax.random.split(jax.random.key(0), 2), tag="dropout")
    with pytest.raises(ValueError, match="not a scalar"):
        nnx.reseed(model, dropout=1)
    nnx.reseed(model, dropout=1, policy="match_shape")
    assert model.dropout.rngs.key.shape == (2,)


def test_a_stream_made_inside_a_trace_refuses_use_outside():
    made = []

    @jax.jit
    def f():
        made.append(nnx.Rngs(1))

    f()
    with pytest.raises(nnx.TraceContextError, match="Cannot mutate RngCount from a different trace"):
        made[0].params()
