"""Sharding metadata without a mesh (the multi-device behaviour is in
tests/nnx/transforms/test_shardings.py)."""

import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

import nnx


def test_partition_specs_from_metadata():
    layer = nnx.Linear(
        3, 4, rngs=nnx.Rngs(0),
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("data", "model")),
    )
    assert layer.kernel.out_sharding == ("data", "model")
    specs = nnx.get_partition_spec(nnx.state(layer))
    assert specs["kernel"].get_value() == P("data", "model")
    assert specs["bias"].get_value() == P()  # no metadata: replicated
    assert isinstance(specs["kernel"], nnx.Param)
    # Older spellings of the metadata are read too.
    legacy = nnx.Param(jnp.zeros((2,)), sharding_names=("model",))
    assert nnx.get_partition_spec(legacy).get_value() == P("model")


def test_names_must_match_the_value_rank():
    init = nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",))
    with pytest.raises(ValueError, match="names 1 dimensions but the value has shape"):
        nnx.Param(init(None, (2, 3)))
