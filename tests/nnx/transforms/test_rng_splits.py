"""nnx.split_rngs: in place with graph updates (restorable), as copies without."""

import jax.numpy as jnp

import nnx


def test_split_in_place_returns_backups_that_restore():
    rngs = nnx.Rngs(params=0, dropout=1)
    key = rngs.params.key[...]
    with nnx.split_rngs(rngs, splits=4, only="params"):
        assert rngs.params.key.shape == (4,) and rngs.params.count.shape == (4,)
        assert rngs.dropout.key.shape == ()
    assert rngs.params.key.shape == () and bool(jnp.all(rngs.params.key[...] == key))
    assert int(rngs.params.count[...]) == 1  # the key consumed for the split


def test_split_without_graph_updates_gives_a_copy_and_leaves_the_streams():
    rngs = nnx.Rngs(params=0)
    copy = nnx.split_rngs(rngs, splits=(2, 3), graph_updates=False)
    assert copy is not rngs and copy.params.key.shape == (2, 3)
    assert rngs.params.key.shape == ()

    seen = []

    @nnx.split_rngs(splits=5, graph_updates=False)
    def f(r):
        seen.append(r.params.key.shape)

    f(rngs)
    assert seen == [(5,)] and rngs.params.key.shape == ()
