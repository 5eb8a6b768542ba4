"""Object / Module attributes: data vs static, tracked containers, structure versions, pytrees."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import _structure as structure


def _tanh(x):
    return jnp.tanh(x)


class Block(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2,)))
        self.raw = jnp.zeros((3,))
        self.n = 3
        self.name = "block"
        self.fn = _tanh
        self.items = []
        self.table = {}


def _paths(state):
    return ["/".join(map(str, p)) for p, _ in state.flat_state()]


def _graphdef_text(node):
    return repr(nnx.graphdef(node))


def test_arrays_and_variables_are_data_other_values_static():
    b = Block()
    assert _paths(nnx.state(b)) == ["raw", "w"]
    text = _graphdef_text(b)
    assert "n=3" in text and "name='block'" in text
    b2 = Block()
    b2.n = 4
    assert nnx.graphdef(b2) != nnx.graphdef(Block())


def test_plain_lists_and_dicts_become_tracked_containers():
    class Net(nnx.Module):
        def __init__(self):
            self.layers = [Block(), [nnx.Param(jnp.ones(1))]]
            self.heads = {"a": Block(), 0: nnx.Param(jnp.zeros(1))}

    net = Net()
    assert type(net.layers) is nnx.List and type(net.layers[1]) is nnx.List
    assert type(net.heads) is nnx.Dict
    assert net.heads.a is net.heads["a"]
    paths = _paths(nnx.state(net))
    assert "layers/0/w" in paths and "layers/1/0" in paths
    assert "heads/0" in paths and "heads/a/w" in paths


def test_tracked_list_append_becomes_state():
    b = Block()
    b.items.append(nnx.Param(jnp.ones(4)))
    b.items.extend([jnp.zeros(1)])
    b.table["k"] = nnx.BatchStat(jnp.ones(2))
    paths = _paths(nnx.state(b))
    assert paths == ["items/0", "items/1", "raw", "table/k", "w"]


def test_tuples_of_modules_are_children():
    class Net(nnx.Module):
        def __init__(self):
            self.pair = (Block(), Block())

    net = Net()
    assert _paths(nnx.state(net))[:2] == ["pair/0/raw", "pair/0/w"]
    merged = nnx.merge(*nnx.split(net))
    assert isinstance(merged.pair, tuple) and isinstance(merged.pair[1], Block)


def _bumps(op):
    before = structure.version()
    op()
    return structure.version() - before


def test_structure_version_bumps_for_seen_nodes():
    b = Block()
    nnx.graphdef(b)  # a flatten marks the nodes as seen
    assert _bumps(lambda: setattr(b, "extra", 1)) == 1
    assert _bumps(lambda: delattr(b, "extra")) == 1
    assert _bumps(lambda: b.items.append(1)) == 1
    assert _bumps(lambda: b.items.pop()) == 1
    assert _bumps(lambda: b.table.__setitem__("k", 1)) == 1
    assert _bumps(lambda: vars(b).__setitem__("z", 2)) == 1
    assert b.z == 2


def test_structure_version_does_not_bump_for_unseen_nodes():
    b = Block()
    assert _bumps(lambda: setattr(b, "extra", 1)) == 0
    assert _bumps(lambda: delattr(b, "extra")) == 0
    assert _bumps(lambda: b.items.append(1)) == 0
    assert _bumps(lambda: b.table.__setitem__("k", 1)) == 0
    assert _bumps(lambda: vars(b).__setitem__("z", 2)) == 0


def test_value_changes_are_not_structural():
    b = Block()
    nnx.graphdef(b)
    assert _bumps(lambda: setattr(b.w, "value", jnp.zeros(2))) == 0
    assert _bumps(lambda: b.w.__iadd__(1)) == 0

    def reassign_same():
        b.w = b.w

    assert _bumps(reassign_same) == 0


def test_vars_setitem_converts_lists():
    b = Block()
    vars(b)["more"] = [nnx.Param(jnp.ones(1))]
    assert type(b.more) is nnx.List
    assert "more/0" in _paths(nnx.state(b))


def test_nnx_data_and_nnx_static_force_the_kind():
    class Forced(nnx.Module):
        def __init__(self):
            self.scale = nnx.data(2.0)
            self.table = nnx.static((0, 1, 2))
            self.plain = 5

    f = Forced()
    assert f.scale == 2.0  # the marker is unwrapped
    assert _paths(nnx.state(f)) == ["scale"]
    assert "table" in _graphdef_text(f)
    f.scale = 3.0  # stays data after reassignment
    assert nnx.state(f)["scale"] == 3.0
    merged = nnx.merge(*nnx.split(f))
    assert merged.table == (0, 1, 2)
    assert merged.plain == 5


class SharedNet(nnx.Module):
    def __init__(self):
        self.a = Block()
        self.b = self.a
        self.s = nnx.static(7)


def test_pickle_and_deepcopy_keep_values_and_sharing():
    net = SharedNet()
    for c in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert type(c) is SharedNet and c is not net and c.s == 7
        assert c.a is c.b and c.a.w is not net.a.w
        assert type(c.a.items) is nnx.List
        np.testing.assert_array_equal(c.a.w.value, np.ones(2))
        assert _paths(nnx.state(c)) == ["a/raw", "a/w"]


def test_jax_tree_map_over_module_returns_module_of_same_type():
    b = Block()
    doubled = jax.tree.map(lambda x: x + 1, b)
    assert type(doubled) is Block and doubled is not b
    assert type(doubled.w) is nnx.Param
    np.testing.assert_array_equal(doubled.w.value, [2.0, 2.0])
    np.testing.assert_array_equal(doubled.raw, [1.0, 1.0, 1.0])
    assert doubled.n == 3 and doubled.name == "block"
    np.testing.assert_array_equal(b.w.value, [1.0, 1.0])  # original untouched
    assert len(jax.tree.leaves(b)) == 2


def test_jax_jit_accepts_a_module():
    b = Block()
    out = jax.jit(lambda m, x: m.fn(x * m.w) + m.n)(b, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(out, [3.0, 3.0 + np.tanh(1.0)], rtol=1e-6)


def test_mutations_inside_plain_jax_jit_are_not_written_back():
    # Documented limitation: plain jax.jit rebuilds the module from its leaves, so updates made
    # inside are lost. The nnx transforms (nnx.jit) carry them back.
    class Counter(nnx.Module):
        def __init__(self):
            self.count = nnx.BatchStat(jnp.array(0))

    c = Counter()

    @jax.jit
    def step(m):
        m.count += 1
        m.flag = True
        return m.count.value

    assert int(step(c)) == 1
    assert int(c.count.value) == 0
    assert not hasattr(c, "flag")


def test_sharing_is_lost_across_plain_jax_boundary():
    class Net(nnx.Module):
        def __init__(self):
            self.a = Block()
            self.b = self.a

    out = jax.tree.map(lambda x: x, Net())
    assert out.a is not out.b


def test_mutating_a_captured_module_inside_jax_jit_raises():
    b = Block()

    @jax.jit
    def f(x):
        b.extra = x
        return x

    with pytest.raises(nnx.TraceContextError, match="Cannot mutate 'Block' from different trace level"):
        f(1.0)

    @jax.jit
    def g(x):
        b.w.value = x
        return x

    with pytest.raises(nnx.TraceContextError, match="Cannot mutate Param"):
        g(jnp.zeros(2))


def test_pytree_false_opts_out_of_registration():
    class Plain(nnx.Module, pytree=False):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(1))

    p = Plain()
    assert jax.tree.leaves(p) == [p]
    assert _paths(nnx.state(p)) == ["w"]
