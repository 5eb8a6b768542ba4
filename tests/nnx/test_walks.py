"""Walks over a graph: iter_graph, iter_children, iter_modules, recursive_map, map,
find_duplicates, in graph mode and tree mode."""

import jax.numpy as jnp
import pytest

import nnx


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.5)
        self.layers = [nnx.Linear(3, 3, rngs=rngs)]


class NotAPytree(nnx.Pytree, pytree=False):
    def __init__(self):
        self.x = 1


def test_iter_graph_order_and_dedup():
    var0, var1 = nnx.Variable(jnp.zeros(1)), nnx.Variable(jnp.zeros(1))
    arr0 = jnp.zeros(1)
    child = nnx.Module()
    child.a, child.b, child.c, child.d = var0, arr0, var1, var0
    root = nnx.Module()
    root.a, root.b, root.c = child, var1, arr0
    nodes = [x for _, x in nnx.iter_graph(root)]
    assert [sum(n is x for n in nodes) for x in (var0, var1, child, root, arr0)] == [1, 1, 1, 1, 2]
    assert nodes == [var0, arr0, var1, child, arr0, root]
    tree_nodes = [x for _, x in nnx.iter_graph(nnx.Module(), graph=False)]
    assert len(tree_nodes) == 1


def test_tree_mode_walks_raise_on_sharing_cycles_and_pytree_false():
    var = nnx.Variable(jnp.zeros(1))
    root = nnx.Module()
    root.a, root.b = var, var
    with pytest.raises(ValueError, match="Duplicate Variable found at paths:\n  - a\n  - b"):
        list(nnx.iter_graph(root, graph=False))
    a = nnx.List([1])
    a.append(nnx.List([2, a]))
    with pytest.raises(ValueError, match="found at paths"):
        list(nnx.iter_graph(a, graph=False))
    with pytest.raises(ValueError, match="found at paths"):
        nnx.recursive_map(lambda p, x: x, a, graph=False)
    with pytest.raises(ValueError, match="pytree=False. Found at path: 0"):
        list(nnx.iter_graph(nnx.List([NotAPytree()]), graph=False))
    with pytest.raises(ValueError, match="pytree=False"):
        list(nnx.iter_children(NotAPytree(), graph=False))


@pytest.mark.parametrize("graph", [True, False])
def test_iter_modules_and_children(graph):
    block = Block(nnx.Rngs(0))
    modules = [(p, type(m).__name__) for p, m in nnx.iter_modules(block, graph=graph)]
    assert modules == [
        (("dropout",), "Dropout"), (("layers", 0), "Linear"), (("linear",), "Linear"),
        ((), "Block"),
    ]
    # a plain list (here `layers`) is a container, not a child
    assert [k for k, _ in nnx.iter_children(block, graph=graph)] == ["dropout", "linear"]
    with pytest.raises(ValueError, match="expects a graph node"):
        list(nnx.iter_children([1], graph=True))


@pytest.mark.parametrize("graph", [True, False])
def test_recursive_map_replaces_and_keeps_the_original(graph):
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=rngs), nnx.relu, nnx.Linear(3, 4, rngs=rngs))

    def lora(_, node):
        if isinstance(node, nnx.Linear):
            return nnx.LoRA(node.in_features, 2, node.out_features, base_module=node, rngs=rngs)
        return node

    new = nnx.recursive_map(lora, model, graph=graph)
    assert isinstance(new.layers[0], nnx.LoRA) and new.layers[1] is nnx.relu
    assert isinstance(new.layers[2], nnx.LoRA)
    assert isinstance(model.layers[0], nnx.Linear)  # the original is unchanged


def test_recursive_map_graph_mode_maps_shared_nodes_once():
    class Foo(nnx.Pytree):
        def __init__(self, d):
            self.d = d

    foo = Foo(10)
    calls = []

    def inc(path, node):
        if isinstance(node, Foo):
            calls.append(path)
            node.d += 1
        return node

    out = nnx.recursive_map(inc, [foo, Foo(20), foo])
    assert out[0] is out[2] and out[0].d == 11 and out[1].d == 21 and len(calls) == 2
    assert foo.d == 10


@pytest.mark.parametrize("graph", [True, False])
def test_map_over_state_leaves(graph):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    zeros = nnx.map(lambda p, v: jnp.zeros_like(v), model, graph=graph)
    assert isinstance(zeros.kernel, nnx.Param) and float(zeros.kernel[...].sum()) == 0.0
    raw = nnx.map(lambda p, x: 0, nnx.Rngs(0), recreate_variables=False)
    assert raw.default.count == 0 and not isinstance(raw.default.count, nnx.Variable)


def test_find_duplicates_and_only():
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(1, 1, rngs=rngs)
            self.b = nnx.Linear(1, 1, rngs=rngs)
            self.c = self.a

    model = Shared(nnx.Rngs(0))
    assert nnx.find_duplicates(model) == [[("a",), ("c",)]]
    model.d = model.b.kernel
    assert nnx.find_duplicates(model, only=nnx.Param) == [[("b", "kernel"), ("d",)]]
