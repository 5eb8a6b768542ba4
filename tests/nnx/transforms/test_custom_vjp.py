"""nnx.custom_vjp: custom backward rules for functions of Modules, checked against jax.grad of
the same formulas written on plain arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Foo(nnx.Module):
    def __init__(self, x, y):
        self.x = nnx.Param(jnp.asarray(x))
        self.y = nnx.Param(jnp.asarray(y))


def _sin_times():
    @nnx.custom_vjp
    def f(m):
        return jnp.sin(m.x) * m.y

    def f_fwd(m):
        return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def f_bwd(res, g):
        input_updates_g, out_g = g
        cos_x, sin_x, m = res
        (m_updates_g,) = input_updates_g
        m_g = jax.tree.map(lambda x: x, m_updates_g)
        m_g["x"][...] = cos_x * out_g * m.y
        m_g["y"][...] = sin_x * out_g
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    return f


def test_module_argument_matches_analytic_gradient():
    f = _sin_times()
    m = Foo(1.0, 2.0)
    assert np.allclose(f(m), np.sin(1.0) * 2.0)
    grads = nnx.grad(f)(m)
    assert isinstance(grads, nnx.State) and isinstance(grads["x"], nnx.Param)
    ref = jax.grad(lambda x, y: jnp.sin(x) * y, argnums=(0, 1))(1.0, 2.0)
    assert np.allclose(grads["x"][...], ref[0]) and np.allclose(grads["y"][...], ref[1])
    jitted = nnx.jit(nnx.grad(f))(m)
    assert np.allclose(jitted["x"][...], ref[0])


def test_custom_rule_is_used_not_autodiff():
    """A rule that clips the gradient proves bwd, not JAX's derivative, runs."""

    @nnx.custom_vjp
    def scale(m, x):
        return m.x * x

    def fwd(m, x):
        return scale(m, x), (m.x[...], x)

    def bwd(res, g):
        (m_g, x_g), out_g = g
        assert x_g is None and isinstance(m_g, nnx.State)
        mx, x = res
        return nnx.State({"x": jnp.clip(out_g * x, -1.0, 1.0), "y": jnp.zeros(())}), out_g * mx

    scale.defvjp(fwd, bwd)
    m = Foo(3.0, 0.0)
    gm, gx = nnx.grad(lambda m, x: scale(m, x), argnums=(0, 1))(m, jnp.asarray(5.0))
    assert float(gm["x"][...]) == 1.0  # clipped; autodiff would give 5
    assert float(gx) == 3.0


def test_state_updates_reach_the_caller_and_their_cotangents_reach_bwd():
    class Counter(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.asarray(2.0))
            self.calls = nnx.BatchStat(jnp.asarray(0.0))

    seen = {}

    @nnx.custom_vjp
    def f(m, x):
        m.calls[...] += 1.0
        return m.w * x

    def fwd(m, x):
        return f(m, x), (m.w[...], x)

    def bwd(res, g):
        (m_g, _), out_g = g
        seen["paths"] = sorted(p for p, _ in m_g.flat_state())
        w, x = res
        return nnx.State({"w": out_g * x, "calls": jnp.zeros(())}), out_g * w

    f.defvjp(fwd, bwd)
    m = Counter()
    assert float(f(m, 3.0)) == 6.0 and float(m.calls[...]) == 1.0
    g = nnx.grad(lambda m, x: f(m, x))(m, jnp.asarray(3.0))
    assert float(g["w"][...]) == 3.0
    assert float(m.calls[...]) == 2.0  # the update inside grad reached the caller
    assert seen["paths"] == [("calls",), ("w",)]
    nnx.jit(lambda m: f(m, 1.0))(m)
    assert float(m.calls[...]) == 3.0


def test_diffstate_selects_the_differentiable_state():
    x_only = nnx.PathContains("x")
    shapes = {}

    @nnx.custom_vjp(nondiff_argnums=(nnx.DiffState(0, x_only),))
    def f(m):
        return jnp.sin(m.x) * m.y

    def fwd(m):
        return f(m), (jnp.cos(m.x), m.y[...])

    def bwd(res, g):
        (m_g,), out_g = g
        shapes["paths"] = [p for p, _ in m_g.flat_state()]
        cos_x, y = res
        m_g = jax.tree.map(lambda v: v, m_g)
        m_g["x"][...] = cos_x * out_g * y
        return (m_g,)

    f.defvjp(fwd, bwd)
    m = Foo(0.5, 3.0)
    g = nnx.grad(f, argnums=nnx.DiffState(0, x_only))(m)
    assert shapes["paths"] == [("x",)]
    assert list(dict(g.flat_state())) == [("x",)]
    assert np.allclose(g["x"][...], np.cos(0.5) * 3.0)


def test_int_nondiff_argument_is_passed_to_bwd_first():
    @nnx.custom_vjp(nondiff_argnums=(0,))
    def f(power, m):
        return m.x ** power

    def fwd(power, m):
        return f(power, m), m.x[...]

    def bwd(power, x, g):
        (m_g,), out_g = g
        return (nnx.State({"x": power * x ** (power - 1) * out_g, "y": jnp.zeros(())}),)

    f.defvjp(fwd, bwd)
    m = Foo(2.0, 0.0)
    g = nnx.grad(lambda m: f(3, m))(m)
    assert np.allclose(g["x"][...], 3 * 2.0**2)


def test_module_inside_a_tuple_argument_and_shared_variable():
    @nnx.custom_vjp
    def f(pair):
        m, x = pair
        return (m.x * x).sum()

    def fwd(pair):
        m, x = pair
        return f(pair), (m.x[...], x)

    def bwd(res, g):
        ((pair_g,), out_g) = g
        assert isinstance(pair_g[0], nnx.State) and pair_g[1] is None
        mx, x = res
        return ((nnx.State({"x": (out_g * x).sum(), "y": jnp.zeros(())}), out_g * mx * jnp.ones_like(x)),)

    f.defvjp(fwd, bwd)
    m = Foo(2.0, 1.0)
    x = jnp.arange(3.0)
    gm, gx = nnx.grad(lambda m, x: f((m, x)), argnums=(0, 1))(m, x)
    assert np.allclose(gm["x"][...], 3.0) and np.allclose(gx, 2.0)


def test_errors_are_clear():
    @nnx.custom_vjp
    def f(m):
        return m.x * 1.0

    with pytest.raises(TypeError, match="defvjp"):
        f(Foo(1.0, 1.0))

    f.defvjp(lambda m: (f(m), None), lambda res, g: ())
    with pytest.raises(TypeError, match="one cotangent per differentiable"):
        nnx.grad(f)(Foo(1.0, 1.0))

    with pytest.raises(TypeError, match="DiffState"):
        g = nnx.custom_vjp(lambda m: m.x * 1.0, nondiff_argnums=(0,))
        g.defvjp(lambda m: (g(m), None), lambda m, res, ct: ())
        g(Foo(1.0, 1.0))

    def grows(m):
        m.extra = nnx.Param(jnp.zeros(()))
        return m.x * 1.0

    h = nnx.custom_vjp(grows)
    h.defvjp(lambda m: (h(m), None), lambda res, g: (g[0][0],))
    with pytest.raises(nnx.TraceContextError, match="structure"):
        h(Foo(1.0, 1.0))
