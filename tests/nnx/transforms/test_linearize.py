"""nnx.vjp and nnx.jvp, checked against jax.vjp / jax.jvp of the same pure functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Scale(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.asarray([1.0, 2.0, 3.0]))
        self.count = nnx.BatchStat(jnp.asarray(0.0))

    def __call__(self, x):
        self.count[...] += 1.0
        return jnp.sum(self.w * x)


X = jnp.asarray([4.0, 5.0, 6.0])


def pure(w, x):
    return jnp.sum(w * x)


@pytest.mark.parametrize("graph", [True, False])
def test_vjp_matches_jax_and_updates_reach_the_module(graph):
    m = Scale()
    out, vjp_fn, aux = nnx.vjp(
        lambda m, x: (m(x), {"x": x}), m, X, has_aux=True, graph=graph, graph_updates=False
    )
    ref_out, ref_vjp = jax.vjp(pure, m.w.value, X)
    ref_w, ref_x = ref_vjp(jnp.ones(()))
    assert float(out) == float(ref_out) and aux["x"] is not None
    assert float(m.count.value) == 1.0
    m_g, x_g = vjp_fn(jnp.ones(()))
    assert type(m_g) is Scale and isinstance(m_g.w, nnx.Param)
    np.testing.assert_allclose(m_g.w.value, ref_w)
    np.testing.assert_allclose(x_g, ref_x)
    assert float(m_g.count.value) == 0.0


def test_vjp_and_jvp_as_decorators_and_on_plain_arrays():
    w = jnp.asarray([1.0, 2.0, 3.0])
    out, vjp_fn = nnx.vjp(graph=False)(pure)(w, X)
    for got, ref in zip(vjp_fn(jnp.ones(())), jax.vjp(pure, w, X)[1](jnp.ones(())), strict=True):
        np.testing.assert_allclose(got, ref)
    tangents = (jnp.ones(3), jnp.arange(3.0))
    got = nnx.jvp(graph=False)(pure)((w, X), tangents)
    ref = jax.jvp(pure, (w, X), tangents)
    np.testing.assert_allclose(got, ref)


@pytest.mark.parametrize("graph", [True, False])
def test_jvp_matches_jax_and_updates_reach_the_module(graph):
    m = Scale()
    m_t = jax.tree.map(jnp.ones_like, m)
    out, t_out = nnx.jvp(lambda m, x: m(x), (m, X), (m_t, jnp.ones(3)), graph=graph,
                         graph_updates=False)
    ref_out, ref_t = jax.jvp(pure, (jnp.asarray([1.0, 2.0, 3.0]), X), (jnp.ones(3), jnp.ones(3)))
    assert float(out) == float(ref_out) and float(t_out) == float(ref_t)
    assert float(m.count.value) == 1.0
    _, t_none = nnx.jvp(lambda m, x: m(x), (m, X), (None, jnp.ones(3)), graph=graph,
                        graph_updates=False)
    assert float(t_none) == float(jnp.sum(m.w.value))


def test_errors():
    m = Scale()
    with pytest.raises(NotImplementedError, match="graph_updates=False"):
        nnx.vjp(lambda m: m(X), m, graph=True, graph_updates=True)
    with pytest.raises(NotImplementedError, match="graph_updates=False"):
        nnx.jvp(lambda m: m(X), (m,), (m,), graph=True, graph_updates=True)
    with pytest.raises(ValueError, match="does not match its structure"):
        nnx.jvp(lambda m: m(X), (m,), ({"w": jnp.ones(3)},), graph=False)
    with pytest.raises(ValueError, match="bound methods"):
        nnx.vjp(m.__call__, X, graph=False)
