"""Taking a step's batch from on-device data (trainer/batches.py): the block layout of a mesh
gives the rows the flat layout gives."""

import jax.numpy as jnp
import numpy as np
import pytest

from trainer import batches as batchlib

BLOCK, N = 4, 10  # 10 real rows, padded to 3 blocks of 4


def _data():
    rows = np.zeros((12, 3), np.float32)
    rows[:N] = np.arange(N * 3, dtype=np.float32).reshape(N, 3) + 1.0
    labels = np.zeros(12, np.int32)
    labels[:N] = np.arange(N) % 3
    flat = (jnp.asarray(rows), jnp.asarray(labels))
    blocks = tuple(a.reshape(3, BLOCK, *a.shape[1:]) for a in flat)
    return flat, blocks


@pytest.mark.parametrize("pos", [0, 1, 2])
def test_a_block_is_the_slice_of_the_flat_rows(pos):
    flat, blocks = _data()
    got = batchlib.block_batch(blocks, None, None, jnp.int32(pos), BLOCK, batchlib.BatchKeys(), False)
    for g, f in zip(got, flat, strict=True):
        np.testing.assert_array_equal(g, f[pos * BLOCK:(pos + 1) * BLOCK])
    tail = batchlib.block_batch(blocks, None, None, jnp.int32(pos), 2, batchlib.BatchKeys(), False)
    np.testing.assert_array_equal(tail[0], flat[0][pos * BLOCK:pos * BLOCK + 2])


def test_a_permuted_batch_is_the_flat_gather():
    flat, blocks = _data()
    perm = jnp.asarray(np.random.default_rng(0).permutation(12).astype(np.int32))
    for pos in range(3):
        got = batchlib.block_batch(blocks, perm, None, jnp.int32(pos), BLOCK, batchlib.BatchKeys(), False)
        want = batchlib.gather(flat, perm[pos * BLOCK:(pos + 1) * BLOCK])
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_a_masked_block_matches_the_masked_gather():
    flat, blocks = _data()
    keys, n = batchlib.BatchKeys(), jnp.int32(N)
    for pos in range(3):
        got = batchlib.block_batch(blocks, None, n, jnp.int32(pos), BLOCK, keys, True)
        want = batchlib.masked_gather(flat, jnp.int32(pos * BLOCK), BLOCK, n, keys)
        assert len(got) == len(want) == 3  # (x, y, weights)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    last = batchlib.block_batch(blocks, None, n, jnp.int32(2), BLOCK, keys, True)
    np.testing.assert_array_equal(last[2], [1.0, 1.0, 0.0, 0.0])  # rows 10 and 11 are padding
