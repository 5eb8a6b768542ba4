import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def test_lora_params_and_output():
    lora = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
    assert lora.lora_a.shape == (3, 2) and lora.lora_b.shape == (2, 4)
    assert isinstance(lora.lora_a, nnx.LoRAParam) and isinstance(lora.lora_b, nnx.Param)
    np.testing.assert_array_equal(lora.lora_b.value, np.zeros((2, 4)))
    lora.lora_b.value = jnp.ones((2, 4))
    x = np.random.RandomState(0).randn(5, 3).astype(np.float32)
    expected = x @ np.asarray(lora.lora_a.value) @ np.ones((2, 4))
    np.testing.assert_allclose(lora(x), expected, rtol=1e-5, atol=1e-6)


def test_lora_with_base_module_starts_equal_to_base():
    base = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    lora = nnx.LoRA(3, 2, 4, base_module=base, rngs=nnx.Rngs(1))
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(lora(x), base(x), rtol=1e-6)
    lora.lora_b.value = jnp.full((2, 4), 0.5)
    delta = np.asarray(x) @ np.asarray(lora.lora_a.value) @ np.full((2, 4), 0.5)
    np.testing.assert_allclose(lora(x), np.asarray(base(x)) + delta, rtol=1e-5)
    assert set(nnx.state(lora, nnx.LoRAParam)) == {"lora_a", "lora_b"}
    assert set(nnx.state(lora, nnx.Param)) == {"base_module", "lora_a", "lora_b"}


def test_lora_param_type_and_dtypes():
    lora = nnx.LoRA(3, 2, 4, lora_param_type=nnx.Param, param_dtype=jnp.float16,
                    dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert type(lora.lora_a) is nnx.Param and lora.lora_a.dtype == jnp.float16
    assert lora(jnp.ones((1, 3))).dtype == jnp.bfloat16


def test_lora_wrong_feature_size():
    lora = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"LoRA expected inputs with 3 features in the last "
                       r"axis, got 5 \(input shape \(1, 5\)\)"):
        lora(jnp.ones((1, 5)))


def test_lora_linear_is_linear_plus_adapter():
    layer = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    assert isinstance(layer, nnx.Linear) and isinstance(layer.lora, nnx.LoRA)
    assert layer.kernel.shape == (3, 4) and layer.lora.lora_a.shape == (3, 2)
    x = np.random.RandomState(1).randn(2, 3).astype(np.float32)
    base = x @ np.asarray(layer.kernel.value) + np.asarray(layer.bias.value)
    np.testing.assert_allclose(layer(x), base, rtol=1e-5, atol=1e-6)
    layer.lora.lora_b.value = jnp.ones((2, 4))
    expected = base + x @ np.asarray(layer.lora.lora_a.value) @ np.ones((2, 4))
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert set(nnx.state(layer, nnx.LoRAParam)["lora"]) == {"lora_a", "lora_b"}
    with pytest.raises(ValueError, match="Linear expected inputs with 3 features"):
        layer(jnp.ones((2, 2)))


def test_lora_metadata_promote_and_base_kwargs():
    class Scaled(nnx.Module):
        def __call__(self, x, factor=1.0):
            return x[..., :2] * factor

    lora = nnx.LoRA(3, 2, 2, base_module=Scaled(), a_metadata={"tag": "a"},
                    b_metadata={"tag": "b"}, rngs=nnx.Rngs(0))
    assert lora.lora_a.get_metadata("tag") == "a" and lora.lora_b.get_metadata("tag") == "b"
    assert isinstance(lora.lora_b, nnx.LoRAParam)
    x = np.arange(3.0, dtype=np.float32).reshape(1, 3)
    np.testing.assert_allclose(lora(x, factor=3.0), x[:, :2] * 3.0)  # lora_b starts at zero
    seen = []

    def promote(args, *, dtype=None):
        seen.append(len(args))
        return args

    assert nnx.LoRA(3, 2, 2, promote_dtype=promote, rngs=nnx.Rngs(0))(x).shape == (1, 2)
    assert seen == [3]
    linear = nnx.LoRALinear(3, 2, lora_rank=2, a_metadata={"tag": "a"}, rngs=nnx.Rngs(0))
    assert linear.lora.lora_a.get_metadata("tag") == "a"
