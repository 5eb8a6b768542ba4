"""Split / merge contexts sharing references, and update contexts carrying identity."""

import jax
import jax.numpy as jnp
import pytest

import nnx


class Bar(nnx.Module):
    def __init__(self):
        self.x = 1


class Foo(nnx.Module):
    def __init__(self):
        self.a = Bar()
        self.b = self.a
        self.w = nnx.Param(jnp.ones(2))


def _round_trip(m1, change):
    """Outer split, inner merge, ``change``, inner split, outer merge."""
    with nnx.update_context("test"):
        with nnx.split_context("test") as ctx:
            graphdef, state = ctx.split(m1)
        with nnx.merge_context("test", inner=True) as ctx:
            m2 = ctx.merge(graphdef, state)
        change(m2)
        with nnx.split_context("test") as ctx:
            graphdef, state = ctx.split(m2)
        with nnx.merge_context("test", inner=False) as ctx:
            return ctx.merge(graphdef, state)


def test_split_context_shares_references_between_splits():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with nnx.split_context() as ctx:
        graphdef1, state1 = ctx.split(m)
        graphdef2, state2 = ctx.split(m)
    assert len(nnx.to_flat_state(state1)) == 2 and len(nnx.to_flat_state(state2)) == 0
    with nnx.merge_context() as ctx:
        assert ctx.merge(graphdef1, state1) is ctx.merge(graphdef2, state2)


def test_update_context_writes_changes_into_the_outer_objects():
    m1 = Foo()
    bar, w = m1.a, m1.w

    def change(m2):
        m2.a.y = 2  # a new static attribute on a shared submodule
        m2.c = m2.a  # a new reference
        m2.d = Bar()  # a new submodule
        m2.w[...] = jnp.zeros(2)

    m3 = _round_trip(m1, change)
    assert m3 is m1 and m1.a is bar and m1.b is bar and m1.c is bar
    assert m1.a.y == 2 and m1.d.x == 1 and m1.w is w
    assert float(m1.w[...].sum()) == 0.0


def test_update_context_through_jax_jit():
    m1 = nnx.Dict({})
    with nnx.update_context("example"):
        with nnx.split_context("example") as ctx:
            graphdef, state = ctx.split(m1)

        @jax.jit
        def f(graphdef, state):
            with nnx.merge_context("example", True) as ctx:
                m2 = ctx.merge(graphdef, state)
            m2.a = 1
            m2.ref = m2  # a reference cycle
            with nnx.split_context("example") as ctx:
                return ctx.split(m2)

        graphdef_out, state_out = f(graphdef, state)
        with nnx.merge_context("example", False) as ctx:
            m3 = ctx.merge(graphdef_out, state_out)
    assert m3 is m1 and m1.a == 1 and m1.ref is m1


def test_contexts_need_their_arguments():
    with pytest.raises(ValueError, match="No update context named 'missing'"):
        with nnx.split_context("missing"):
            pass
    with nnx.update_context("t"):
        with pytest.raises(ValueError, match="needs inner=True or inner=False"):
            with nnx.merge_context("t"):
                pass
