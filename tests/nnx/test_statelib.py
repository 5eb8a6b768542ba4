"""State: nested mapping access, pytree behaviour, flat views, filtering, pure dicts."""

import copy
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Count(nnx.Variable):
    pass


def _state():
    return nnx.State(
        {
            "linear": {"kernel": nnx.Param(jnp.ones((2, 3))), "bias": nnx.Param(jnp.zeros(3))},
            "layers": {0: {"w": nnx.Param(jnp.full(2, 2.0))}, 1: {"n": Count(jnp.array(4))}},
            "mean": nnx.BatchStat(jnp.zeros(3)),
        }
    )


def _paths(state):
    return ["/".join(map(str, p)) for p, _ in state.flat_state()]


def test_attribute_and_item_access():
    s = _state()
    assert s.linear.kernel is s["linear"]["kernel"]
    assert s["layers"][0]["w"] is s.layers[0].w
    assert isinstance(s.linear, nnx.State)
    assert set(s) == {"linear", "layers", "mean"} and len(s) == 3
    assert "mean" in s and "var" not in s
    with pytest.raises(AttributeError, match="State has no key 'var'"):
        _ = s.var
    s.extra = nnx.Param(jnp.ones(1))
    assert "extra" in s
    del s["extra"]
    assert "extra" not in s


def test_jax_tree_map_keeps_structure_and_variable_types():
    s = _state()
    doubled = jax.tree.map(lambda x: x * 2, s)
    assert isinstance(doubled, nnx.State)
    assert type(doubled.linear.kernel) is nnx.Param and type(doubled.layers[1].n) is Count
    np.testing.assert_array_equal(doubled.layers[0].w.value, [4.0, 4.0])
    assert len(jax.tree.leaves(s)) == 5


def test_state_through_jax_jit_as_argument_and_output():
    s = _state()

    @jax.jit
    def step(state):
        return jax.tree.map(lambda x: x + 1, state), jnp.sum(state.linear.kernel.value)

    out, total = step(s)
    assert float(total) == 6.0
    assert isinstance(out, nnx.State) and type(out.mean) is nnx.BatchStat
    np.testing.assert_array_equal(out.linear.bias.value, np.ones(3))
    assert int(out.layers[1].n.value) == 5
    assert _paths(out) == _paths(s)


def test_flat_state_and_from_flat_path_round_trip():
    s = _state()
    flat = s.flat_state()
    assert [p for p, _ in flat] == [
        ("layers", 0, "w"), ("layers", 1, "n"), ("linear", "bias"), ("linear", "kernel"),
        ("mean",),
    ]
    rebuilt = nnx.State.from_flat_path(flat)
    assert rebuilt == s
    assert rebuilt.layers[0].w is s.layers[0].w
    assert nnx.State.from_flat_path(dict(flat)) == s


def test_equality_compares_values():
    a = _state()
    b = jax.tree.map(jnp.copy, _state())
    assert a == b
    b.mean.value = jnp.ones(3)
    assert a != b


def test_filter_split_and_merge():
    s = _state()
    params = s.filter(nnx.Param)
    assert _paths(params) == ["layers/0/w", "linear/bias", "linear/kernel"]
    counts, stats = s.filter(Count, nnx.BatchStat)
    assert (_paths(counts), _paths(stats)) == (["layers/1/n"], ["mean"])
    p, rest = s.split(nnx.Param, ...)
    assert _paths(rest) == ["layers/1/n", "mean"]
    with pytest.raises(ValueError, match="Non-exhaustive"):
        s.split(nnx.Param)
    merged = nnx.State.merge(p, rest)
    assert merged == s
    assert nnx.merge_state(p, rest) == s
    assert (p | rest) == s
    assert _paths(s - p) == ["layers/1/n", "mean"]


def test_merge_later_states_win():
    a = nnx.State({"x": nnx.Param(jnp.zeros(1))})
    b = nnx.State({"x": nnx.Param(jnp.ones(1))})
    assert float(nnx.State.merge(a, b).x.value[0]) == 1.0


def test_to_pure_dict_unwraps_variables_and_keeps_int_keys():
    pure = _state().to_pure_dict()
    assert set(pure["layers"]) == {0, 1}
    assert type(pure["mean"]) is not nnx.BatchStat
    np.testing.assert_array_equal(pure["layers"][0]["w"], [2.0, 2.0])
    assert type(pure) is dict and type(pure["linear"]) is dict
    assert nnx.to_pure_dict(_state()).keys() == pure.keys()


def test_replace_by_pure_dict_writes_values():
    s = _state()
    pure = jax.tree.map(lambda x: x + 10, s.to_pure_dict())
    s.replace_by_pure_dict(pure)
    assert type(s.linear.kernel) is nnx.Param
    np.testing.assert_array_equal(s.linear.kernel.value, np.full((2, 3), 11.0))
    assert int(s.layers[1].n.value) == 14


def test_replace_by_pure_dict_after_json_round_trip_uses_string_keys():
    s = _state()
    pure = jax.tree.map(lambda x: (np.asarray(x) * 3).tolist(), s.to_pure_dict())
    loaded = json.loads(json.dumps(pure))
    assert set(loaded["layers"]) == {"0", "1"}
    nnx.replace_by_pure_dict(s, loaded)
    np.testing.assert_array_equal(s.layers[0].w.value, [6.0, 6.0])
    assert int(np.asarray(s.layers[1].n.value)) == 12


def test_replace_by_pure_dict_unknown_key_raises_naming_it():
    s = _state()
    with pytest.raises(KeyError, match="'linear/kernal' does not exist"):
        s.replace_by_pure_dict({"linear": {"kernal": np.ones((2, 3))}})
    with pytest.raises(KeyError, match="'layers/7/w' does not exist"):
        s.replace_by_pure_dict({"layers": {7: {"w": np.ones(2)}}})


def test_pure_dict_restores_a_model_through_merge():
    class Net(nnx.Module):
        def __init__(self, value):
            self.layers = [nnx.Param(jnp.full(2, value))]

    graphdef, abstract = nnx.split(Net(0.0))
    abstract.replace_by_pure_dict(nnx.state(Net(5.0)).to_pure_dict())
    restored = nnx.merge(graphdef, abstract)
    np.testing.assert_array_equal(restored.layers[0].value, [5.0, 5.0])


def test_repr_shows_nested_keys_and_variables():
    text = repr(_state())
    assert text.startswith("State({")
    assert "'linear': State({" in text
    assert "'kernel': Param(" in text and "shape=(2, 3)" in text
    assert "0: State({" in text


def test_pickle_copy_and_deepcopy():
    s = _state()
    for c in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s)):
        assert isinstance(c, nnx.State) and c is not s
        assert c == s
        assert type(c.layers[1].n) is Count and c.linear.kernel is not s.linear.kernel
    shallow = copy.copy(s)
    assert shallow is not s and shallow.linear is s.linear


def test_missing_internal_attribute_raises_attribute_error():
    bare = object.__new__(nnx.State)
    with pytest.raises(AttributeError):
        _ = bare._mapping


def test_flat_state_is_a_sorted_sequence_of_pairs():
    state = nnx.State({"b": nnx.Param(jnp.ones(1)), "a": {0: nnx.BatchStat(jnp.zeros(1))}})
    flat = nnx.to_flat_state(state)
    assert flat.paths == (("a", 0), ("b",)) and flat[1][0] == ("b",)
    assert isinstance(flat[:1], nnx.FlatState) and len(flat[:1]) == 1
    assert flat.to_nested_state() == state and nnx.from_flat_state(flat) == state
    stats = flat.filter(nnx.BatchStat)
    assert stats.paths == (("a", 0),)
    assert nnx.map_state(lambda p, v: v.copy(v[...] + 1), state)["b"][...][0] == 2.0
