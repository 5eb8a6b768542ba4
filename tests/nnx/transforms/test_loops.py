"""nnx.fori_loop and nnx.while_loop (nnx/transforms/loops.py)."""

import jax.numpy as jnp
import pytest

import nnx


class Counter(nnx.Pytree):
    def __init__(self):
        self.total = jnp.array(0.0)  # a plain array attribute, replaced by the body
        self.steps = nnx.BatchStat(jnp.array(0))


def _body(c):
    c.total = c.total + 2.0
    c.steps[...] += 1
    return c


@pytest.mark.parametrize("graph", [True, False])
@pytest.mark.parametrize("loop", ["fori", "while"])
def test_loops_without_graph_updates_carry_replaced_attributes(graph, loop):
    c = Counter()
    if loop == "fori":
        out = nnx.fori_loop(0, 3, lambda i, c: _body(c), c, graph=graph, graph_updates=False)
    else:
        out = nnx.while_loop(lambda c: c.total < 6.0, _body, c, graph=graph, graph_updates=False)
    assert float(out.total) == 6.0 and float(c.total) == 0.0  # a new node; the caller's keeps its own
    assert out.steps is c.steps and int(c.steps[...]) == 3


def test_loops_with_graph_updates_update_the_callers_node():
    c = Counter()
    out = nnx.fori_loop(0, 3, lambda i, c: _body(c), c, graph=True, graph_updates=True)
    assert out is c and float(c.total) == 6.0 and int(c.steps[...]) == 3


def test_a_variable_loop_value_is_itself():
    v = nnx.Param(jnp.array(1.0))

    def double(i, v):
        v[...] *= 2
        return v

    out = nnx.fori_loop(0, 3, double, v, graph=True, graph_updates=False)
    assert out is v and float(v[...]) == 8.0
