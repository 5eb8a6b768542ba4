"""The graph functions in graph mode and tree mode, single values as roots, update / pop on
containers, clone(arrays=), GraphState (nnx.unpack), nnx.call and GraphDef.apply."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.Param(jnp.zeros(()))
        self.w = nnx.Param(jnp.ones((2,)))

    def inc(self):
        self.count[...] += 1
        return 1


def _paths(state):
    return ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)]


@pytest.mark.parametrize("graph", [True, False])
def test_split_merge_in_both_modes(graph):
    g = [{"a": 1, "b": nnx.Param(jnp.array(2))}, 3, nnx.Param(jnp.array(4))]
    graphdef, state = nnx.split(g, graph=graph)
    assert _paths(state) == ["0/b", "2"]
    g2 = nnx.merge(graphdef, state)
    assert g2[0]["a"] == 1 and g2[1] == 3 and int(g2[2][...]) == 4


def test_tree_mode_rejects_sharing_in_every_function():
    v = nnx.Param(jnp.array(1))
    for fn in (nnx.split, nnx.state, nnx.graphdef, nnx.clone):
        with pytest.raises(ValueError, match="Duplicate Param found at paths"):
            fn([v, v], graph=False)
    with nnx.set_graph_mode(False):
        with pytest.raises(ValueError, match="found at paths"):
            nnx.split((v, v))
    ref = jax.new_ref(jnp.array(1.0))
    with pytest.raises(ValueError, match="Duplicate Ref found at paths"):
        nnx.split([ref, ref], graph=False)


def test_single_value_is_its_own_state():
    for leaf in (42, jnp.array([1, 2])):
        graphdef, state = nnx.split(leaf)
        assert state is leaf and nnx.merge(graphdef, state) is leaf
    v = nnx.Param(jnp.array(1))
    graphdef, stats, params, rest = nnx.split(v, nnx.BatchStat, nnx.Param, ...)
    assert params is v and stats == nnx.State({}) and rest == nnx.State({})
    assert nnx.merge(graphdef, stats, params, rest) is v


def test_merge_needs_a_state():
    graphdef, _ = nnx.split(Counter())
    with pytest.raises(TypeError, match=r"merge\(\) missing 1 required positional argument: 'state'"):
        nnx.merge(graphdef)


def test_merge_copy_and_list_of_leaves():
    m = Counter()
    graphdef, state = nnx.split(m)
    assert nnx.merge(graphdef, state, copy=True).w is not m.w
    leaves = nnx.flatten(m)[1]
    assert nnx.merge(graphdef, leaves).w is m.w


def test_update_plain_dicts_and_tuples_of_nodes():
    node = {"a": {"b": 1, "c": nnx.Param(jnp.array(2)), "d": 3}}
    nnx.update(node, {"a": {"b": 4, "c": jnp.array(10)}})
    assert node["a"]["b"] == 4 and int(node["a"]["c"][...]) == 10 and node["a"]["d"] == 3
    m1, m2 = Counter(), Counter()
    graphdef, state = nnx.split((m1, m2))
    state[1]["w"][...] = jnp.full((2,), 5.0)
    nnx.update((m1, m2), state)
    np.testing.assert_array_equal(m2.w[...], [5.0, 5.0])
    with pytest.raises(ValueError, match="immutable tuple"):
        nnx.update((jnp.zeros(1),), {0: jnp.ones(1)})


def test_update_writes_raw_values_past_a_set_value_hook():
    class Clipped(nnx.Variable):
        def set_value(self, value, **kwargs):
            super().set_value(jnp.clip(value, 0, 1), **kwargs)

    v = Clipped(jnp.zeros(()))
    nnx.update(v, jnp.array(5.0))
    assert float(v.get_raw_value()) == 5.0


def test_pop_from_nested_dicts_with_a_predicate():
    node = {"a": {"b": jnp.array(1), "c": nnx.Param(jnp.array(2)), "d": jnp.array(3.0)}}
    popped = nnx.pop(node, (nnx.Param, lambda _, x: x < 2))
    assert int(popped["a"]["b"]) == 1 and int(popped["a"]["c"][...]) == 2
    assert list(node["a"]) == ["d"]


def test_clone_shares_or_copies_buffers():
    m = Counter()
    shared, distinct = nnx.clone(m), nnx.clone(m, arrays=True)
    assert shared.w is not m.w and shared.w[...] is m.w[...]
    assert distinct.w[...] is not m.w[...]
    np.testing.assert_array_equal(distinct.w[...], m.w[...])
    assert nnx.clone(m, variables=False).w is m.w
    with pytest.raises(ValueError, match="needs variables=True"):
        nnx.clone(m, variables=False, arrays=True)


def test_unpack_graph_state_round_trip_and_errors():
    m = Counter()
    params, = (nnx.unpack(m, nnx.Param),)
    assert isinstance(params, nnx.GraphState) and "w" in params
    assert params._graphdef == nnx.graphdef(m)
    mapped = jax.tree.map(lambda x: x * 2, params)
    assert isinstance(mapped, nnx.GraphState)
    merged = nnx.merge(mapped)
    np.testing.assert_array_equal(merged.w[...], [2.0, 2.0])
    leaves_state = jax.tree_util.tree_flatten_with_path(nnx.state(m))[0]
    leaves_unpacked = jax.tree_util.tree_flatten_with_path(nnx.unpack(m))[0]
    assert [p for p, _ in leaves_state] == [p for p, _ in leaves_unpacked]
    with pytest.raises(ValueError, match="GraphDef must be the same"):
        nnx.merge(nnx.unpack(m), nnx.unpack(nnx.Linear(1, 1, rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="Expected GraphState objects"):
        nnx.merge(nnx.unpack(m), nnx.state(m))
    gs = nnx.unpack(m)
    gs.w = jnp.zeros(2)  # attribute writes go to the State
    nnx.update(m, gs)
    np.testing.assert_array_equal(m.w[...], [0.0, 0.0])


def test_call_and_apply_return_output_and_new_pair():
    pair = nnx.split({"a": Counter(), "b": Counter()})
    out, pair = nnx.call(pair)["b"].inc()
    assert out == 1
    nodes = nnx.merge(*pair)
    assert float(nodes["a"].count[...]) == 0 and float(nodes["b"].count[...]) == 1
    graphdef, state = nnx.split(Counter())
    out, (graphdef2, state2) = graphdef.apply(state).inc()
    assert out == 1 and float(state2["count"][...]) == 1


def test_graphdef_and_purestate_are_subscriptable():
    def f(graphdef: nnx.GraphDef[nnx.Dict], pure: nnx.PureState[Counter]) -> None:
        pass

    assert nnx.GraphDef[Counter].__origin__ is nnx.GraphDef
    assert nnx.graph.Key is not None


def test_as_pure_and_with_vars():
    state = nnx.state(Counter())
    pure = nnx.as_pure(state)
    assert not isinstance(pure["w"], nnx.Variable) and isinstance(pure, nnx.State)
    m = Counter()
    tagged = nnx.with_vars(m, only=nnx.Param, trainable=False)
    assert tagged.w is not m.w and tagged.w.trainable is False
    shared = nnx.List([m.w, m.w])
    with pytest.raises(ValueError, match="duplicate Variables at paths"):
        nnx.with_vars(shared, trainable=False)


def test_flat_state_views():
    flat = nnx.to_flat_state(nnx.state(Counter()))
    assert flat.paths == (("count",), ("w",)) and len(flat) == 2
    assert isinstance(flat.leaves[1], nnx.Param)
    assert nnx.from_flat_state(flat) == nnx.state(Counter())
    params, rest = flat.split(nnx.Param, ...)
    assert len(params) == 2 and len(rest) == 0
    assert nnx.restore_int_paths({"0": {"1": 2}, "a": 3}) == {0: {1: 2}, "a": 3}
