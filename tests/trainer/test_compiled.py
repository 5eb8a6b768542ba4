"""The compiled forms of the steps (trainer/compiled.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from trainer.compiled import PackedLogs


def _per_step_logs(i):
    f = i.astype(jnp.float32)
    return {
        "loss": f * 0.5,
        "count": i * 3,
        "flag": i % 2 == 0,
        "half": (f + 0.25).astype(jnp.bfloat16),
        "vector": jnp.stack([f, f + 1.0]),
        "nested": {"acc": f / 7.0, "steps": i + 100},
    }


def test_packed_logs_come_back_bit_identical_to_stacked_logs():
    def packed_scan(i0):
        packed = PackedLogs()

        def body(i, _):
            return i + 1, packed.pack(_per_step_logs(i))

        _, stacked = jax.lax.scan(body, i0, None, length=5)
        return packed.unpack(stacked)

    def plain_scan(i0):
        return jax.lax.scan(lambda i, _: (i + 1, _per_step_logs(i)), i0, None, length=5)[1]

    got, want = jax.jit(packed_scan)(jnp.int32(3)), jax.jit(plain_scan)(jnp.int32(3))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_packed_logs_of_a_step_without_logs():
    packed = PackedLogs()
    _, stacked = jax.lax.scan(lambda c, _: (c, packed.pack(None)), 0, None, length=3)
    assert packed.unpack(stacked) is None
