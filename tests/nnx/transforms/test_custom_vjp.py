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
    """bwd sees the cotangents of every updated Variable, but only the DiffState's ones are
    read back: y gets no gradient although bwd returns one."""
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
        m_g["y"][...] = jnp.asarray(100.0)
        return (m_g,)

    f.defvjp(fwd, bwd)
    m = Foo(0.5, 3.0)
    g = nnx.grad(f, argnums=nnx.DiffState(0, x_only))(m)
    assert shapes["paths"] == [("x",), ("y",)]
    assert list(dict(g.flat_state())) == [("x",)]
    assert np.allclose(g["x"][...], np.cos(0.5) * 3.0)
    g_all = nnx.grad(f)(m)
    assert float(g_all["y"][...]) == 0.0


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



def test_structure_changes_reach_the_caller_in_graph_mode_with_updates():
    def grows(m):
        m.extra = nnx.Param(jnp.zeros(()))
        m.calls = getattr(m, "calls", 0) + 1
        return m.x * 1.0

    def rule(mode):
        h = nnx.custom_vjp(grows, graph_updates=mode)
        h.defvjp(lambda m: (h(m), m.x[...]), lambda res, g: (g,) if not mode else (g[0][0],))
        return h

    m = Foo(1.0, 1.0)
    rule(True)(m)
    assert m.calls == 1 and isinstance(m.extra, nnx.Param)
    m = Foo(1.0, 1.0)
    rule(False)(m)
    assert not hasattr(m, "extra") and not hasattr(m, "calls")


# -- graph=False / graph_updates=False: jax.custom_vjp on pytrees ---------------------------


class Counted(nnx.Module):
    def __init__(self, x, y):
        self.x = nnx.Param(jnp.asarray(x))
        self.y = nnx.Param(jnp.asarray(y))
        self.calls = nnx.BatchStat(jnp.asarray(0.0))


@pytest.mark.parametrize("graph", [True, False])
def test_tree_mode_rule_takes_and_returns_module_shaped_cotangents(graph):
    seen = {}

    @nnx.custom_vjp(graph=graph, graph_updates=False)
    def f(m):
        m.calls[...] += 1.0
        return jnp.sin(m.x) * m.y

    def fwd(m):
        return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def bwd(res, g, updates_g):
        (m_up,) = updates_g
        seen["updates"] = (m_up.x, m_up.y, type(m_up.calls))
        cos_x, sin_x, m = res
        m_g = jax.tree.map(jnp.zeros_like, m)
        m_g.x[...] = cos_x * g * m.y
        m_g.y[...] = sin_x * g
        return (m_g,)

    f.defvjp(fwd, bwd)
    m = Counted(1.0, 2.0)
    g = nnx.grad(f, graph=graph, graph_updates=False)(m)
    ref = jax.grad(lambda x, y: jnp.sin(x) * y, argnums=(0, 1))(1.0, 2.0)
    assert type(g) is Counted
    np.testing.assert_allclose(g.x[...], ref[0], rtol=1e-6)
    np.testing.assert_allclose(g.y[...], ref[1], rtol=1e-6)
    assert seen["updates"] == (None, None, nnx.BatchStat)  # only the updated Variable
    assert float(m.calls[...]) == 1.0


@pytest.mark.parametrize("graph", [True, False])
def test_tree_mode_nondiff_arguments_may_hold_variables(graph):
    @nnx.custom_vjp(nondiff_argnums=(0, 2), graph=graph, graph_updates=False)
    def f(power, m, counter):
        counter[...] += 1.0
        return m.x ** power

    def fwd(power, m, counter):
        return f(power, m, counter), m.x[...]

    def bwd(power, counter, x, g):
        assert power == 3 and isinstance(counter, nnx.BatchStat)
        m_g = nnx.clone(Foo(0.0, 0.0))
        m_g.x[...] = power * x ** (power - 1) * g
        return (m_g,)

    f.defvjp(fwd, bwd)
    m, counter = Foo(2.0, 5.0), nnx.BatchStat(jnp.asarray(0.0))
    g = nnx.grad(lambda m, c: f(3, m, c), graph=graph, graph_updates=False)(m, counter)
    np.testing.assert_allclose(g.x[...], 3 * 2.0**2)
    assert float(g.y[...]) == 0.0
    assert float(counter[...]) == 1.0


def test_tree_mode_errors():
    v = nnx.Param(jnp.asarray(1.0))

    @nnx.custom_vjp(nondiff_argnums=(1,), graph=True, graph_updates=False)
    def f(a, b):
        return a[...] + b[...]

    f.defvjp(lambda a, b: (f(a, b), ()), lambda b, res, g: (g,))
    with pytest.raises(ValueError, match="Duplicate"):
        f(v, v)

    @nnx.custom_vjp(graph=False)
    def h(m):
        return m.x * m.y

    h.defvjp(lambda m: (h(m), ()), lambda res, g: ({"x": g},))
    with pytest.raises(ValueError, match="does not match its structure"):
        nnx.grad(h, graph=False)(Foo(1.0, 2.0))
    with pytest.raises(ValueError, match="cannot contain `DiffState`"):
        nnx.custom_vjp(lambda m: m, nondiff_argnums=(nnx.DiffState(0, ...),), graph=False)
