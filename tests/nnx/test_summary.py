import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.summary import summary, tabulate


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.linear(x)))


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.block = Block(rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x, *, repeat_head: bool = False):
        h = self.block(x)
        return self.head(h), (self.head(h) if repeat_head else None)


def _rows(table):
    lines = table.splitlines()
    body = lines[3 : lines.index(lines[2], 3)]
    return [[c.strip() for c in line.split("|")] for line in body]


def test_one_row_per_call_with_shapes_and_counts():
    model = Model(nnx.Rngs(0))
    table = tabulate(model, jnp.ones((5, 3)))
    rows = _rows(table)
    assert [r[0] for r in rows] == ["(root)", "block", "block/linear", "block/bn", "head"]
    by_path = {r[0]: r for r in rows}
    assert by_path["block/linear"][1:4] == ["Linear", "float32[5,3]", "float32[5,4]"]
    assert by_path["head"][3] == "float32[5,2]"
    assert by_path["(root)"][3] == "(float32[5,2], None)"
    # params: linear 3*4+4=16, bn scale+bias 8, head 4*2+2=10; bn mean/var are BatchStats
    assert by_path["block/linear"][4] == "16 (64 B)"
    assert by_path["block"][4] == "24 (96 B)"
    assert by_path["block"][5] == "8 (32 B)"
    assert by_path["(root)"][4] == "34 (136 B)"
    assert "Total parameters: 34 (136 B)" in table
    assert "Total BatchStat: 8 (32 B)" in table
    assert "Total variables: 42 (168 B)" in table


def test_shared_module_called_twice_gives_two_rows_and_kwargs_pass_through():
    rows = _rows(summary(Model(nnx.Rngs(0)), jnp.ones((1, 3)), repeat_head=True))
    assert [r[0] for r in rows].count("head") == 2


def test_depth_limits_rows():
    rows = _rows(tabulate(Model(nnx.Rngs(0)), jnp.ones((1, 3)), depth=1))
    assert [r[0] for r in rows] == ["(root)", "block", "head"]


def test_without_inputs_lists_parameters_per_module():
    rows = _rows(tabulate(Model(nnx.Rngs(0))))
    assert rows[0][:3] == ["(root)", "Model", "34 (136 B)"]
    assert {r[0] for r in rows} == {"(root)", "block", "block/bn", "block/linear", "head"}
    assert len(rows[0]) == 4  # path, module, Param, BatchStat: no shape columns


def test_model_is_not_changed_and_calls_are_restored():
    model = Model(nnx.Rngs(0))
    before = nnx.state(model).to_pure_dict()
    kernel = model.head.kernel
    original_call = nnx.Linear.__dict__["__call__"]
    tabulate(model, jnp.ones((5, 3)))  # BatchNorm in training mode would update its stats
    after = nnx.state(model).to_pure_dict()
    np.testing.assert_array_equal(after["block"]["bn"]["mean"], before["block"]["bn"]["mean"])
    np.testing.assert_array_equal(after["head"]["kernel"], before["head"]["kernel"])
    assert model.head.kernel is kernel
    assert nnx.Linear.__dict__["__call__"] is original_call
    assert not hasattr(model.block, "attention_weights")


class Broken(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
        return self.linear(x) @ jnp.ones((5, 5))


def test_wrappers_restored_after_exception():
    original_call = nnx.Linear.__dict__["__call__"]
    broken_call = Broken.__dict__["__call__"]
    with pytest.raises(TypeError, match="dot_general"):
        tabulate(Broken(nnx.Rngs(0)), jnp.ones((2, 3)))
    assert nnx.Linear.__dict__["__call__"] is original_call
    assert Broken.__dict__["__call__"] is broken_call


def test_wrong_feature_size_propagates_layer_error():
    with pytest.raises(ValueError, match="Linear expected inputs with 3 features"):
        tabulate(Model(nnx.Rngs(0)), jnp.ones((2, 7)))
