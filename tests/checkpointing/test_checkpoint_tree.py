"""checkpointing.state: dtypes of loaded values, the checks of a tree read from disk, and
encoded data-iterator states."""

import logging

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import checkpointing
import nnx
from trainer import Trainer


class Half(nnx.Module):
    """bfloat16 parameters beside an int32 counter."""

    def __init__(self, dtype=jnp.bfloat16):
        self.kernel = nnx.Param(jnp.zeros((3, 2), dtype))
        self.bias = nnx.Param(jnp.zeros((2,), dtype))
        self.count = nnx.Variable(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        return x @ self.kernel.value + self.bias.value


def test_loaded_values_keep_the_models_dtypes_and_one_log_names_the_casts(caplog):
    model = Half()
    saved = {"kernel": np.full((3, 2), 1.5, np.float32), "bias": np.ones(2, np.float32), "count": np.int32(4)}
    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        values = checkpointing.checked_model_values(model, saved)
    assert [v.dtype for _, v in values] == [jnp.bfloat16, jnp.int32, jnp.bfloat16]  # bias, count, kernel
    assert float(dict((id(var), v) for var, v in values)[id(model.kernel)][0, 0]) == 1.5
    records = [r for r in caplog.records if r.name == "checkpointing"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "2 checkpoint value(s) cast to the Half's dtypes" in message
    assert "'bias' float32 -> bfloat16" in message and "'kernel' float32 -> bfloat16" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        checkpointing.checked_model_values(Half(jnp.float32), {**saved, "count": np.int32(1)})
    assert caplog.records == []  # same dtypes: nothing to say


def test_a_bfloat16_model_restoring_a_float32_checkpoint_stays_bfloat16(tmp_path, caplog):
    source = Half(jnp.float32)
    source.kernel.value = jnp.full((3, 2), 0.25, jnp.float32)
    Trainer(source, optax.adam(1e-3), loss="mse").save(tmp_path)
    model = Half()
    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        assert Trainer(model, optax.adam(1e-3), loss="mse").restore(tmp_path) == 0
    assert model.kernel.value.dtype == jnp.bfloat16 and model.bias.value.dtype == jnp.bfloat16
    assert float(model.kernel.value[0, 0]) == 0.25
    assert "'kernel' float32 -> bfloat16" in caplog.text


def test_tree_problems_name_each_missing_or_mistyped_entry():
    good = {"model": {}, "optimizer": {}, "step": 12, "epoch": 3, "batch": 0, "callbacks": {},
            "rng": np.zeros(2, np.uint32), "data": checkpointing.encode_iterator_state({"next_index": 4})}
    assert checkpointing.tree_problems(good, 12) == []
    assert checkpointing.tree_problems({**good, "step": np.asarray(12)}, 12) == []  # 0-d arrays are ints
    assert checkpointing.tree_problems({}, 12) == [
        "it has no 'model'", "it has no 'optimizer'", "it has no 'step'", "it has no 'epoch'"
    ]
    assert checkpointing.tree_problems({"model": {}, "optimizer": {}}) == []  # in memory: step optional
    bad = {**good, "step": 5, "epoch": -1, "callbacks": [1], "rng": np.zeros(2, np.float32)}
    assert checkpointing.tree_problems(bad, 12) == [
        "its 'callbacks' is a list, not a mapping",
        "its 'epoch' is -1, not an int >= 0",
        "its metadata says step 5 but it is checkpoint 12",
        "its 'rng' is ndarray float32, not key data (uint32)",
    ]
    assert checkpointing.tree_problems([1, 2]) == ["the checkpoint is a list, not a mapping"]


def test_damaged_iterator_states_say_what_is_wrong():
    for state in ({"next_index": 3}, b"\x00state", [1, 2]):
        assert checkpointing.decode_iterator_state(checkpointing.encode_iterator_state(state)) == state
    for text, message in [
        ("json:{\"next_index\": ", r"the data-iterator state 'json:\{\"next_index\": ' cannot be decoded"),
        ("bytes:%%%", r"'bytes:%%%' cannot be decoded"),
        ("pickle:xyz", r"unknown data-iterator state 'pickle:xyz' \(expected 'json:' or 'bytes:'\)"),
        (17, r"the data-iterator state is a int, not an encoded string"),
    ]:
        with pytest.raises(ValueError, match=message):
            checkpointing.decode_iterator_state(text)


def test_load_checkpoint_state_names_what_a_tree_lacks():
    trainer = Trainer(Half(jnp.float32), optax.sgd(0.1), loss="mse")
    with pytest.raises(ValueError, match=r"the checkpoint cannot be used: it has no 'optimizer'"):
        trainer.load_checkpoint_state({"model": {}})
