import jax.numpy as jnp

import nnx


def test_import_and_param():
    p = nnx.Param(jnp.ones(3))
    assert p.shape == (3,)
