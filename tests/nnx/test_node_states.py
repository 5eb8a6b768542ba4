"""Pure trees of graph nodes: nnx.to_tree, nnx.from_tree, nnx.NodeStates (nnx/_node_states.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


def _linear():
    return nnx.Linear(2, 3, rngs=nnx.Rngs(0))


def test_to_tree_replaces_nodes_and_keeps_other_leaves():
    m = _linear()
    pure = nnx.to_tree((m, 1, {"b": m}))
    assert isinstance(pure[0], nnx.NodeStates) and pure[1] == 1
    np.testing.assert_array_equal(pure[0].state["kernel"].get_value(), m.kernel.get_value())
    # the second sight of the same Module is a reference: an empty State
    assert not jax.tree.leaves(pure[2]["b"].states)
    leaves = jax.tree.leaves(pure)  # a plain pytree: the arrays (and the int) are its leaves
    assert len(leaves) == 3


def test_from_tree_rebuilds_shared_objects_once():
    m = _linear()
    back = nnx.from_tree(nnx.to_tree((m, {"b": m})))
    assert isinstance(back[0], nnx.Linear) and back[0] is back[1]["b"] and back[0] is not m
    np.testing.assert_array_equal(back[0].kernel.get_value(), m.kernel.get_value())


def test_pure_trees_pass_through_jax_jit():
    m = _linear()

    @jax.jit
    def f(pure, x):
        (model,) = nnx.from_tree(pure)
        return model(x)

    x = jnp.ones((4, 2))
    np.testing.assert_allclose(f(nnx.to_tree((m,)), x), m(x), rtol=1e-6)


def test_inconsistent_prefixes_of_a_shared_object_raise():
    m = _linear()
    nnx.to_tree((m, 1, {"b": m}), prefix=(0, None, 0))
    with pytest.raises(ValueError, match=r"Inconsistent aliasing detected(.|\n)*Linear at\n  \[0\]: 0\n  \[2\]\['b'\]: 1"):
        nnx.to_tree((m, 1, {"b": m}), prefix=(0, None, 1))
    # a Variable shared by two Modules counts too
    a, b = _linear(), _linear()
    b.kernel = a.kernel
    with pytest.raises(ValueError, match="Inconsistent aliasing"):
        nnx.to_tree((a, b), prefix=(0, 1))
    nnx.to_tree((a, b), prefix=(0, 1), check_aliasing=False)


def test_prefix_that_does_not_match_the_tree_raises():
    with pytest.raises(ValueError, match="not a prefix"):
        nnx.to_tree((_linear(), _linear()), prefix=(0, 1, 2))


def test_split_fn_sees_each_nodes_prefix():
    seen = []

    def split_fn(ctx, path, prefix, node):
        seen.append((jax.tree_util.keystr(path), prefix))
        return nnx.NodeStates.from_split(*ctx.split(node, nnx.Param, ...), metadata=prefix)

    pure = nnx.to_tree({"a": _linear(), "b": [_linear(), 3]}, prefix={"a": 0, "b": None}, split_fn=split_fn)
    assert seen == [("['a']", 0), ("['b'][0]", None)]
    assert pure["a"].metadata == 0 and len(pure["a"].states) == 2


def test_node_states_constructors():
    s = nnx.State({"x": 1})
    assert nnx.NodeStates.from_states(s).state is s
    with pytest.raises(ValueError, match="no GraphDef"):
        _ = nnx.NodeStates.from_states(s).graphdef
    two = nnx.NodeStates.from_prefixes((0, None), metadata="axes")
    assert two.states == (0, None) and two.metadata == "axes"
    with pytest.raises(ValueError, match="exactly one State"):
        _ = two.state


def test_update_context_round_trip_updates_the_callers_objects():
    m = _linear()
    with nnx.update_context("t"):
        pure = nnx.to_tree((m,), ctxtag="t")
        (inner,) = nnx.from_tree(pure, ctxtag="t", is_inner=True)
        inner.kernel.set_value(inner.kernel.get_value() * 0)
        inner.extra = nnx.Param(jnp.ones(2))
        (back,) = nnx.from_tree(nnx.to_tree((inner,), ctxtag="t"), ctxtag="t", is_inner=False)
    assert back is m and float(jnp.abs(m.kernel.get_value()).sum()) == 0.0
    np.testing.assert_array_equal(m.extra.get_value(), np.ones(2))
