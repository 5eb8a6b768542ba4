"""nnx.fori_loop and nnx.while_loop (nnx/transforms/loops.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(st.sampled_from([(), (2,), (3, 1)]), min_size=0, max_size=2),
    variables=st.lists(st.sampled_from([(), (2,)]), min_size=0, max_size=2),
    steps=st.integers(1, 3),
    graph=st.booleans(),
    updates=st.booleans(),
    transform=st.sampled_from(["fori", "while", "scan"]),
)
def test_loop_carries_match_a_plain_loop(raw, variables, steps, graph, updates, transform):
    """Array attributes the body replaces and Variables it updates in place come out as a
    plain Python loop computes them, in every mode; the caller's Variables are updated, and its
    node itself only with graph updates."""
    if not graph:
        updates = False

    class State(nnx.Pytree):
        def __init__(self):
            self.raw = nnx.List([jnp.full(s, float(i)) for i, s in enumerate(raw)])
            self.vars = nnx.List([nnx.BatchStat(jnp.full(s, 10.0 * i)) for i, s in enumerate(variables)])
            self.t = jnp.array(0)

    def body(state):
        for i in range(len(state.raw)):
            state.raw[i] = state.raw[i] * 2.0 + 1.0
        for v in state.vars:
            v[...] += 3.0
        state.t = state.t + 1
        return state

    state = State()
    kw = {"graph": graph, "graph_updates": updates}
    if transform == "fori":
        out = nnx.fori_loop(0, steps, lambda i, s: body(s), state, **kw)
    elif transform == "while":
        out = nnx.while_loop(lambda s: s.t < steps, body, state, **kw)
    else:
        out = nnx.scan(body, in_axes=nnx.Carry, out_axes=nnx.Carry, length=steps, **kw)(state)
    for i, s in enumerate(raw):
        want = float(i)
        for _ in range(steps):
            want = want * 2.0 + 1.0
        np.testing.assert_array_equal(np.asarray(out.raw[i]), np.full(s, want))
        np.testing.assert_array_equal(np.asarray(state.raw[i]), np.full(s, want if updates else float(i)))
    for i, s in enumerate(variables):
        assert out.vars[i] is state.vars[i]
        np.testing.assert_array_equal(np.asarray(state.vars[i][...]), np.full(s, 10.0 * i + 3.0 * steps))
    assert int(out.t) == steps and (out is state) == updates
