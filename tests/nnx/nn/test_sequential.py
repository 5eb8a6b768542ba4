import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def test_sequential_chains_modules_and_functions():
    rngs = nnx.Rngs(0)
    a, b = nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)
    model = nnx.Sequential(a, nnx.relu, lambda x: x * 2.0, b)
    x = jnp.array([[1.0, -1.0]])
    expected = b(nnx.relu(a(x)) * 2.0)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)
    assert model.layers[0] is a and model.layers[3] is b
    assert isinstance(model.layers, nnx.List)


def test_sequential_accepts_one_list_and_state_paths_are_integers():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential([nnx.Linear(2, 3, rngs=rngs), nnx.relu, nnx.Linear(3, 1, rngs=rngs)])
    assert len(model.layers) == 3
    state = nnx.state(model)
    assert set(state["layers"]) == {0, 2}
    assert state["layers"][0]["kernel"].shape == (2, 3)
    assert model(jnp.ones((4, 2))).shape == (4, 1)


def test_sequential_does_not_unpack_tuples_and_forwards_kwargs_to_first():
    model = nnx.Sequential(lambda x, scale=1.0: (x * scale, x), lambda pair: pair[0] + pair[1])
    np.testing.assert_allclose(model(jnp.ones(2), scale=3.0), [4.0, 4.0])
    assert nnx.Sequential()(5) == 5


def test_sequential_rejects_non_callables():
    with pytest.raises(TypeError, match="Sequential: layer 1 is not callable, got int"):
        nnx.Sequential(nnx.relu, 3)


def test_sequential_split_merge_roundtrip():
    model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.relu)
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    x = jnp.array([[0.5, -2.0]])
    np.testing.assert_allclose(clone(x), model(x), rtol=1e-6)


def test_empty_sequential_is_the_identity():
    identity = nnx.Sequential()
    assert identity(12) == 12
    assert identity(1, 2) == (1, 2)
    assert identity(k=2) == {"k": 2}
    assert identity() is None
