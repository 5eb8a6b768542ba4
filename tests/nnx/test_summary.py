import jax
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
    """The table's body rows (header and footer excluded) as lists of cells; a cell that spans
    several lines is joined with newlines."""
    rows, current = [], None
    for line in table.splitlines():
        if line.startswith(("┡", "├")):
            if current is not None:
                rows.append(["\n".join(c).rstrip("\n") for c in current])
            current = []
        elif line.startswith("│") and current is not None:
            cells = [c[1:].rstrip() for c in line.strip("│").split("│")]  # keep indentation
            if not current:
                current = [[] for _ in cells]
            for lines, cell in zip(current, cells, strict=True):
                if cell or lines:
                    lines.append(cell)
        elif line.startswith("└"):
            break
    return rows


def test_one_row_per_call_with_shapes_and_counts():
    model = Model(nnx.Rngs(0))
    table = tabulate(model, jnp.ones((5, 3)))
    lines = table.splitlines()
    assert lines[0].strip() == "Model Summary"
    assert [c.strip() for c in lines[2].strip("┃").split("┃")] == [
        "path", "type", "inputs", "outputs", "BatchStat", "Param",
    ]
    rows = _rows(table)
    assert [r[0] for r in rows] == ["", "block", "block/linear", "block/bn", "head"]
    by_path = {r[0]: r for r in rows}
    assert by_path["block/linear"][1:4] == ["Linear", "float32[5,3]", "float32[5,4]"]
    assert by_path["head"][3] == "float32[5,2]"
    assert by_path[""][3] == "- float32[5,2]\n- None"
    # params: linear 3*4+4=16, bn scale+bias 8, head 4*2+2=10; bn mean/var are BatchStats
    assert by_path["block/linear"][5] == "bias: float32[4]\nkernel: float32[3,4]\n\n16 (64 B)"
    assert by_path["block"][5] == "24 (96 B)"
    assert by_path["block"][4] == "8 (32 B)"
    assert by_path["block/bn"][4] == "mean: float32[4]\nvar: float32[4]\n\n8 (32 B)"
    assert by_path[""][5] == "34 (136 B)"
    footer = next(line for line in lines if "Total" in line and line.startswith("│"))
    assert [c.strip() for c in footer.strip("│").split("│")][3:] == ["Total", "8 (32 B)", "34 (136 B)"]
    assert lines[-1].strip() == "Total Parameters: 42 (168 B)"


def test_repeated_call_with_same_shapes_is_one_row_and_kwargs_pass_through():
    rows = _rows(summary(Model(nnx.Rngs(0)), jnp.ones((1, 3)), repeat_head=True))
    assert [r[0] for r in rows].count("head") == 1
    assert rows[0][2] == "- float32[1,3]\nrepeat_head: True"


class TwoMethods(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)

    def encode(self, x, options):
        return self.linear(x)

    def __call__(self, x):
        return self.encode(x, {}), self.encode(x[:1], None)


def test_public_methods_are_rows_with_empty_containers_and_none_shown():
    rows = _rows(tabulate(TwoMethods(nnx.Rngs(0)), jnp.ones((2, 3))))
    assert [r[0] for r in rows] == ["", "encode", "linear", "encode", "linear"]
    assert rows[1][2] == "- float32[2,3]\n- {}"
    assert rows[3][2] == "- float32[1,3]\n- None"
    assert [r[3] for r in rows[2:5:2]] == ["float32[2,4]", "float32[1,4]"]


def test_depth_limits_rows():
    rows = _rows(tabulate(Model(nnx.Rngs(0)), jnp.ones((1, 3)), depth=1))
    assert [r[0] for r in rows] == ["", "block", "head"]


def test_without_inputs_lists_parameters_per_module():
    rows = _rows(tabulate(Model(nnx.Rngs(0))))
    assert rows[0] == ["", "Model", "8 (32 B)", "34 (136 B)"]  # no inputs/outputs columns
    assert [r[0] for r in rows] == ["", "block", "block/bn", "block/linear", "head"]


def test_custom_metadata_is_shown_and_rng_state_gets_one_column():
    class Tagged(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((2, 2)), note="frozen")
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))

        def __call__(self, x):
            return self.drop(x @ self.w)

    table = tabulate(Tagged(), jnp.ones((1, 2)))
    root = _rows(table)[0]
    assert root[4] == "w:\n  value: float32[2,2]\n  note: frozen\n\n4 (16 B)"
    assert root[5] == "2 (12 B)"  # the stream's key (8 bytes) and count (4 bytes)
    assert "RngState" in table.splitlines()[2] and "RngKey" not in table


class Counting(nnx.Module):
    calls = 0

    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
        Counting.calls += 1
        return jnp.sum(self.linear(x) ** 2)


def test_flops_match_xla_cost_analysis_and_bodies_run_once():
    model = Counting(nnx.Rngs(0))
    x = jnp.ones((2, 3))
    Counting.calls = 0
    table = tabulate(model, x, compute_flops=True)
    assert Counting.calls == 1
    header = [c.strip() for c in table.splitlines()[2].strip("┃").split("┃")]
    assert header[4] == "flops" and "vjp_flops" not in header
    rows = _rows(table)
    ref = jax.jit(lambda x: model.linear(x)).lower(x).cost_analysis()
    assert rows[1][0] == "linear" and int(rows[1][4]) == int(ref["flops"])
    assert int(rows[0][4]) > int(rows[1][4])
    header = tabulate(model, x, compute_flops=True, compute_vjp_flops=True).splitlines()[2]
    assert "vjp_flops" in header


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
