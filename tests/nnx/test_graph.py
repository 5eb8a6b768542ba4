"""The graph API: split, merge, update, state, graphdef, clone, pop, iter_graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, *, rngs):
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (din, dout)))
        self.bias = nnx.Param(jnp.zeros((dout,)))
        self.din, self.dout = din, dout

    def __call__(self, x):
        return x @ self.kernel + self.bias


class Count(nnx.Variable):
    pass


class Pair(nnx.Module):
    def __init__(self, a, b):
        self.a = a
        self.b = b


class Tagged(nnx.Module):
    def __init__(self, tag="x"):
        self.w = nnx.Param(jnp.ones((2,)))
        self.s = nnx.BatchStat(jnp.zeros((2,)))
        self.n = Count(jnp.array(0))
        self.tag = tag


def _paths(state):
    return ["/".join(map(str, p)) for p, _ in state.flat_state()]


# -- split / merge ----------------------------------------------------------------------


def test_split_merge_round_trip_computes_same_outputs():
    model = Linear(3, 4, rngs=nnx.Rngs(0))
    x = jnp.arange(6.0).reshape(2, 3)
    expected = np.asarray(x) @ np.asarray(model.kernel.value)  # bias is zero
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    assert isinstance(merged, Linear) and merged is not model
    assert (merged.din, merged.dout) == (3, 4)
    np.testing.assert_allclose(merged(x), expected, rtol=1e-6)
    assert _paths(state) == ["bias", "kernel"]


def test_merge_reuses_variables_of_the_state():
    model = Linear(2, 2, rngs=nnx.Rngs(0))
    merged = nnx.merge(*nnx.split(model))
    assert merged.kernel is model.kernel
    assert nnx.state(model)["kernel"] is model.kernel


def test_shared_variable_appears_once_and_is_shared_after_merge():
    a = Linear(2, 3, rngs=nnx.Rngs(0))
    b = Linear(2, 3, rngs=nnx.Rngs(1))
    b.kernel = a.kernel
    graphdef, state = nnx.split(Pair(a, b))
    assert _paths(state) == ["a/bias", "a/kernel", "b/bias"]
    merged = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
    assert merged.a.kernel is merged.b.kernel
    assert merged.a.bias is not merged.b.bias


def test_shared_submodule_is_shared_after_merge():
    shared = Linear(2, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(Pair(shared, shared))
    assert _paths(state) == ["a/bias", "a/kernel"]
    merged = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
    assert merged.a is merged.b
    assert merged.a.kernel is merged.b.kernel


def test_reference_cycle_survives_split_and_merge():
    model = Linear(2, 2, rngs=nnx.Rngs(0))
    model.ref = model
    graphdef, state = nnx.split(model)
    assert _paths(state) == ["bias", "kernel"]
    merged = nnx.merge(graphdef, state)
    assert merged.ref is merged
    assert "ref=Linear(...)" in repr(model)
    assert [p for p, _ in nnx.iter_graph(model)][-1] == ()


def test_split_and_merge_of_standalone_variable():
    v = nnx.Param(jnp.arange(3.0), note="n")
    graphdef, leaf = nnx.split(v)
    assert leaf is v
    assert nnx.state(v) is v
    merged = nnx.merge(graphdef, leaf)
    assert merged is v
    rebuilt = nnx.merge(graphdef, jnp.ones(3))
    assert type(rebuilt) is nnx.Param and rebuilt.note == "n"
    np.testing.assert_array_equal(rebuilt.value, np.ones(3))


def test_lists_dicts_and_tuples_of_modules_round_trip():
    class Net(nnx.Module):
        def __init__(self):
            self.layers = [Linear(2, 2, rngs=nnx.Rngs(i)) for i in range(11)]
            self.heads = {"cls": Linear(2, 1, rngs=nnx.Rngs(20))}
            self.pair = (nnx.Param(jnp.ones(1)), jnp.zeros(2), "static")

    net = Net()
    graphdef, state = nnx.split(net)
    paths = _paths(state)
    assert paths[:4] == ["heads/cls/bias", "heads/cls/kernel", "layers/0/bias", "layers/0/kernel"]
    assert paths.index("layers/9/bias") < paths.index("layers/10/bias")  # ints sort numerically
    assert paths[-2:] == ["pair/0", "pair/1"]
    merged = nnx.merge(graphdef, state)
    assert isinstance(merged.layers, nnx.List) and len(merged.layers) == 11
    assert merged.pair[2] == "static"
    assert merged.layers[10].kernel is net.layers[10].kernel


# -- GraphDef ---------------------------------------------------------------------------


def test_graphdef_equal_and_hashable_for_same_structure():
    g1 = nnx.graphdef(Tagged())
    g2 = nnx.graphdef(Tagged())
    assert g1 == g2 and hash(g1) == hash(g2)
    assert len({g1, g2}) == 1


def test_graphdef_changes_with_static_attribute():
    g1 = nnx.graphdef(Tagged("x"))
    g2 = nnx.graphdef(Tagged("y"))
    assert g1 != g2
    m = Tagged()
    m.extra = 3
    assert nnx.graphdef(m) != g1


def test_graphdef_differs_for_shared_versus_separate_submodules():
    shared = Linear(2, 2, rngs=nnx.Rngs(0))
    g_shared = nnx.graphdef(Pair(shared, shared))
    g_separate = nnx.graphdef(Pair(shared, Linear(2, 2, rngs=nnx.Rngs(0))))
    assert g_shared != g_separate


def test_graphdef_is_a_leafless_pytree_accepted_by_jax_jit():
    model = Linear(2, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    assert jax.tree.leaves(graphdef) == []
    assert jax.tree.map(lambda x: x, graphdef) == graphdef

    @jax.jit
    def forward(graphdef, state, x):
        return nnx.merge(graphdef, state)(x)

    x = jnp.ones((1, 2))
    np.testing.assert_allclose(forward(graphdef, state, x), x @ np.asarray(model.kernel.value))


# -- filters in split / state -------------------------------------------------------------


def test_split_non_exhaustive_names_path_and_type():
    with pytest.raises(ValueError, match="Non-exhaustive") as info:
        nnx.split(Tagged(), nnx.Param, nnx.BatchStat)
    assert "n: Count" in str(info.value)
    assert "`...`" in str(info.value)


def test_split_with_ellipsis_last_takes_the_rest():
    graphdef, params, rest = nnx.split(Tagged(), nnx.Param, ...)
    assert _paths(params) == ["w"]
    assert _paths(rest) == ["n", "s"]


def test_ellipsis_not_last_raises():
    with pytest.raises(ValueError, match="can only be used as the last filters"):
        nnx.split(Tagged(), ..., nnx.Param)
    with pytest.raises(ValueError, match="can only be used as the last filters"):
        nnx.state(Tagged(), True, nnx.Param)


def test_first_matching_filter_wins():
    everything, params = nnx.state(Tagged(), nnx.Variable, nnx.Param)
    assert _paths(everything) == ["n", "s", "w"]
    assert len(params) == 0


def test_state_drops_the_remainder_without_raising():
    params = nnx.state(Tagged(), nnx.Param)
    assert _paths(params) == ["w"]
    counts, stats = nnx.state(Tagged(), Count, nnx.BatchStat)
    assert (_paths(counts), _paths(stats)) == (["n"], ["s"])


def test_split_with_several_filters_and_merge_back():
    model = Tagged()
    graphdef, params, stats, counts = nnx.split(model, nnx.Param, nnx.BatchStat, Count)
    merged = nnx.merge(graphdef, params, stats, counts)
    assert merged.w is model.w and merged.n is model.n
    assert merged.tag == "x"


# -- update -------------------------------------------------------------------------------


def test_update_in_place_keeps_variable_identity():
    model = Linear(2, 3, rngs=nnx.Rngs(0))
    kernel = model.kernel
    _, state = nnx.split(model)
    new_state = jax.tree.map(lambda x: x + 1.0, state)
    nnx.update(model, new_state)
    assert model.kernel is kernel
    np.testing.assert_array_equal(model.bias.value, np.ones(3))


def test_update_with_pure_dict_writes_values():
    model = Linear(2, 3, rngs=nnx.Rngs(0))
    kernel = model.kernel
    nnx.update(model, {"kernel": jnp.full((2, 3), 2.0)})
    assert model.kernel is kernel
    np.testing.assert_array_equal(model.kernel.value, np.full((2, 3), 2.0))
    np.testing.assert_array_equal(model.bias.value, np.zeros(3))


def test_update_pure_dict_unknown_path_raises_naming_it():
    class Net(nnx.Module):
        def __init__(self):
            self.layers = [Linear(2, 2, rngs=nnx.Rngs(0))]

    net = Net()
    with pytest.raises(KeyError, match="'foo' does not exist"):
        nnx.update(net, {"foo": jnp.ones(2)})
    with pytest.raises(KeyError, match="'layers/0/kernl' does not exist"):
        nnx.update(net, {"layers": {0: {"kernl": jnp.ones((2, 2))}}})
    assert not hasattr(net, "foo")


def test_update_pure_dict_shape_mismatch_names_path_and_shapes():
    model = Linear(2, 3, rngs=nnx.Rngs(0))
    before = np.asarray(model.kernel.value)
    with pytest.raises(ValueError, match=r"'kernel'.*\(2, 3\).*\(5,\)"):
        nnx.update(model, {"kernel": jnp.ones((5,))})
    np.testing.assert_array_equal(model.kernel.value, before)


def test_update_python_scalar_and_zero_d_array_are_interchangeable():
    class Box(nnx.Module):
        def __init__(self):
            self.step = Count(jnp.array(0))
            self.rate = nnx.Param(0.5)

    box = Box()
    nnx.update(box, {"step": 7, "rate": jnp.array(0.25)})
    assert int(box.step.value) == 7
    assert float(box.rate.value) == 0.25


def test_update_with_state_of_variables_may_add_paths():
    class Net(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "h", x * 2)
            return x

    net = Net()
    _, sown = nnx.split(_called(Net(), jnp.ones(2)))
    nnx.update(net, sown)
    assert isinstance(net.h, nnx.Intermediate)
    np.testing.assert_array_equal(net.h.value[0], np.full(2, 2.0))


def _called(module, x):
    module(x)
    return module


def test_update_with_several_states():
    model = Tagged()
    _, params, rest = nnx.split(Tagged(), nnx.Param, ...)
    params = jax.tree.map(lambda x: x * 5, params)
    rest = jax.tree.map(lambda x: x + 3, rest)
    nnx.update(model, params, rest)
    np.testing.assert_array_equal(model.w.value, np.full(2, 5.0))
    np.testing.assert_array_equal(model.s.value, np.full(2, 3.0))
    assert int(model.n.value) == 3


def test_merge_with_missing_variables_names_them():
    graphdef, params, _ = nnx.split(Tagged(), nnx.Param, ...)
    with pytest.raises(ValueError, match=r"missing 2 Variable\(s\).*n, s"):
        nnx.merge(graphdef, params)


def test_merge_rejects_a_non_graphdef():
    with pytest.raises(TypeError, match="GraphDef"):
        nnx.merge(nnx.state(Tagged()))


# -- clone / pop / iter_graph / find_duplicates ----------------------------------------------


def test_clone_is_independent_and_keeps_internal_sharing():
    shared = Linear(2, 2, rngs=nnx.Rngs(0))
    model = Pair(shared, shared)
    copy = nnx.clone(model)
    assert copy.a is copy.b and copy.a is not shared
    assert copy.a.kernel is not shared.kernel
    copy.a.kernel.value = jnp.full((2, 2), 9.0)
    assert float(shared.kernel.value.max()) < 1.0
    np.testing.assert_array_equal(copy.b.kernel.value, np.full((2, 2), 9.0))


def test_pop_removes_and_returns_matching_variables():
    class Net(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))
            self.inner = Pair(Linear(1, 1, rngs=nnx.Rngs(0)), 3)

        def __call__(self, x):
            self.sow(nnx.Intermediate, "y", x)
            self.inner.sow(nnx.Intermediate, "z", x + 1)

    net = Net()
    net(jnp.zeros(2))
    popped = nnx.pop(net, nnx.Intermediate)
    assert _paths(popped) == ["inner/z", "y"]
    assert isinstance(popped["y"], nnx.Intermediate)
    assert not hasattr(net, "y") and not hasattr(net.inner, "z")
    assert _paths(nnx.state(net)) == ["inner/a/bias", "inner/a/kernel", "w"]


def test_pop_requires_a_filter():
    with pytest.raises(ValueError, match="at least one filter"):
        nnx.pop(Tagged())


def test_iter_graph_post_order_root_last_shared_once():
    shared = Linear(2, 2, rngs=nnx.Rngs(0))
    model = Pair(shared, shared)
    items = list(nnx.iter_graph(model))
    paths = [p for p, _ in items]
    assert paths == [("a", "bias"), ("a", "kernel"), ("a",), ()]
    assert items[-1][1] is model
    assert items[2][1] is shared


def test_iter_graph_allows_replacing_submodules_while_iterating():
    class Wrapped(nnx.Module):
        def __init__(self, inner):
            self.inner = inner

    model = Pair(Linear(2, 2, rngs=nnx.Rngs(0)), Linear(2, 2, rngs=nnx.Rngs(1)))
    for _, node in list(nnx.iter_graph(model)):
        if isinstance(node, nnx.Module):
            for name, value in list(vars(node).items()):
                if isinstance(value, Linear):
                    setattr(node, name, Wrapped(value))
    assert isinstance(model.a, Wrapped) and isinstance(model.b, Wrapped)
    assert _paths(nnx.state(model))[0] == "a/inner/bias"


def test_find_duplicates_lists_paths_of_shared_objects():
    shared = Linear(2, 2, rngs=nnx.Rngs(0))
    # a shared module is reported once; its contents are not looked into again
    assert nnx.find_duplicates(Pair(shared, shared)) == [[("a",), ("b",)]]
    v = nnx.Param(jnp.ones(1))
    assert nnx.find_duplicates([v, {"x": v}]) == [[(0,), (1, "x")]]
    assert nnx.find_duplicates(Pair(shared, shared), only=nnx.Param) == []
    assert nnx.find_duplicates(Linear(2, 2, rngs=nnx.Rngs(0))) == []


# -- seed 000 "Parameter surgery", modern spelling ------------------------------------------


class Sequence(nnx.Module):
    def __init__(self, layers):
        self.layers = layers

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def load_pretrained_model():
    rngs = nnx.Rngs(0)
    return Sequence([lambda x: x.reshape((x.shape[0], -1)), Linear(784, 32, rngs=rngs)])


class Classifier(nnx.Module):
    def __init__(self, backbone, *, rngs):
        self.backbone = backbone
        self.head = Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(self.backbone(x))


def test_seed000_parameter_surgery_shares_the_backbone():
    pretrained = load_pretrained_model()
    model = Classifier(pretrained, rngs=nnx.Rngs(1))
    y = model(jnp.ones((1, 28, 28)))
    assert y.shape == (1, 10)
    assert model.backbone is pretrained
    assert model.backbone.layers[1].kernel is pretrained.layers[1].kernel
    shapes = jax.tree.map(jnp.shape, nnx.state(model).to_pure_dict())
    assert shapes == {
        "backbone": {"layers": {1: {"bias": (32,), "kernel": (784, 32)}}},
        "head": {"bias": (10,), "kernel": (32, 10)},
    }
    # the state under backbone/ holds the pretrained Variables themselves
    assert nnx.state(model)["backbone"]["layers"][1]["kernel"] is pretrained.layers[1].kernel
    # an update through the classifier is visible in the pretrained model
    nnx.update(model, {"backbone": {"layers": {1: {"bias": jnp.ones(32)}}}})
    np.testing.assert_array_equal(pretrained.layers[1].bias.value, np.ones(32))


def test_update_pure_dict_after_json_round_trip_resolves_string_list_indices():
    import json

    class Net(nnx.Module):
        def __init__(self, value):
            self.layers = [nnx.Param(jnp.full(2, value)), nnx.Param(jnp.full(1, value))]

    net = Net(0.0)
    pure = jax.tree.map(lambda x: np.asarray(x).tolist(), nnx.state(Net(3.0)).to_pure_dict())
    loaded = json.loads(json.dumps(pure))
    assert set(loaded["layers"]) == {"0", "1"}
    nnx.update(net, loaded)
    np.testing.assert_array_equal(net.layers[0].value, [3.0, 3.0])
    np.testing.assert_array_equal(net.layers[1].value, [3.0])
    with pytest.raises(KeyError, match="'layers/2' does not exist"):
        nnx.update(net, {"layers": {"2": [1.0]}})
