import jax
import jax.numpy as jnp
import numpy as np

import nnx


def test_activations_are_jax_functions_at_top_level():
    for name in ["relu", "gelu", "silu", "swish", "sigmoid", "softmax", "log_softmax", "elu",
                 "leaky_relu", "softplus", "one_hot", "celu", "glu", "hard_sigmoid", "hard_silu",
                 "hard_swish", "hard_tanh", "log_sigmoid", "relu6", "selu", "soft_sign",
                 "standardize", "logsumexp"]:
        assert getattr(nnx, name) is getattr(jax.nn, name), name
    assert nnx.tanh is jnp.tanh
    assert nnx.normalize is jax.nn.standardize
    assert "relu" in nnx.nn.__all__ and "PReLU" in nnx.nn.__all__


def test_activation_values():
    x = np.array([-2.0, 0.0, 3.0], np.float32)
    np.testing.assert_array_equal(nnx.relu(x), [0.0, 0.0, 3.0])
    np.testing.assert_allclose(nnx.softmax(x), np.exp(x) / np.exp(x).sum(), rtol=1e-6)
    np.testing.assert_array_equal(nnx.one_hot(jnp.array([1]), 3), [[0.0, 1.0, 0.0]])


def test_prelu():
    act = nnx.PReLU(negative_slope_init=0.2)
    assert isinstance(act.negative_slope, nnx.Param) and act.negative_slope.shape == ()
    x = np.array([-2.0, 0.0, 3.0], np.float32)
    np.testing.assert_allclose(act(x), [-0.4, 0.0, 3.0], rtol=1e-6)
    assert act(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert "negative_slope" in nnx.state(act, nnx.Param)
