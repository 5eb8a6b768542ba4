import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Count(nnx.Variable):
    pass


class Lin(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(6.0).reshape(3, 2) / 10)
        self.b = nnx.Param(jnp.ones((2,)))
        self.count = Count(jnp.array(0))

    def __call__(self, x):
        self.count += 1
        return x @ self.w + self.b


X = jnp.arange(12.0).reshape(4, 3) / 10


def loss(m, x):
    return jnp.mean(m(x) ** 2)


def test_grad_matches_jax_reference_and_only_params():
    m = Lin()
    g = nnx.grad(loss)(m, X)
    ref_w, ref_b = jax.grad(lambda w, b: jnp.mean((X @ w + b) ** 2), argnums=(0, 1))(
        m.w.value, m.b.value
    )
    assert isinstance(g, nnx.State) and sorted(g) == ["b", "w"]
    assert isinstance(g["w"], nnx.Param)
    np.testing.assert_allclose(g["w"].value, ref_w, rtol=1e-6)
    np.testing.assert_allclose(g["b"].value, ref_b, rtol=1e-6)
    assert int(m.count.value) == 1  # the update inside grad reached the model


def test_value_and_grad_has_aux_and_wrt_and_diffstate():
    m = Lin()
    (value, aux), g = nnx.value_and_grad(lambda m: (loss(m, X), {"n": 2}), has_aux=True)(m)
    assert float(value) == pytest.approx(float(jnp.mean((X @ m.w.value + m.b.value) ** 2)))
    assert aux == {"n": 2}
    g_b = nnx.grad(loss, wrt=nnx.PathContains("b"))(m, X)
    assert list(g_b) == ["b"]
    g_ds = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.PathContains("w")))(m, X)
    assert list(g_ds) == ["w"]


def test_grad_of_arrays_and_several_argnums():
    m = Lin()
    g_m, g_x = nnx.grad(loss, argnums=(0, 1))(m, X)
    ref = jax.grad(lambda x: jnp.mean((x @ m.w.value + m.b.value) ** 2))(X)
    np.testing.assert_allclose(g_x, ref, rtol=1e-6)
    assert sorted(g_m) == ["b", "w"]


def test_sgd_step_inside_jit_lowers_loss():
    m = Lin()

    @nnx.jit
    def step(m):
        value, g = nnx.value_and_grad(loss)(m, X)
        params = nnx.state(m, nnx.Param)
        nnx.update(m, jax.tree.map(lambda p, g: p - 0.1 * g, params, g))
        return value

    losses = [float(step(m)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert int(m.count.value) == 5


def test_remat_same_value_and_grad():
    m = Lin()
    direct = nnx.grad(loss)(m, X)
    rematted = nnx.grad(nnx.remat(loss))(m, X)
    np.testing.assert_allclose(direct["w"].value, rematted["w"].value, rtol=1e-6)


# -- graph=False / graph_updates=False: gradients shaped like the argument -----------------


def test_tree_mode_grad_is_a_copy_of_the_module_and_updates_reach_it():
    m = Lin()
    g = nnx.grad(loss, graph=False, wrt=nnx.Param)(m, X)
    ref_w, ref_b = jax.grad(lambda w, b: jnp.mean((X @ w + b) ** 2), argnums=(0, 1))(
        m.w.value, m.b.value
    )
    assert type(g) is Lin and g is not m
    assert isinstance(g.w, nnx.Param) and g.w is not m.w
    np.testing.assert_allclose(g.w.value, ref_w, rtol=1e-6)
    np.testing.assert_allclose(g.b.value, ref_b, rtol=1e-6)
    assert g.count.value.dtype == jax.dtypes.float0  # not chosen by wrt: a zero cotangent
    assert int(m.count.value) == 1


def test_tree_mode_grad_differentiates_every_variable_and_rejects_integers():
    d = nnx.Dict(p=nnx.Param(jnp.asarray(3.0)), s=nnx.BatchStat(jnp.asarray(2.0)), n=7)
    g = nnx.grad(lambda d: d.p * d.s, graph=True, graph_updates=False)(d)
    assert isinstance(g, nnx.Dict) and g.n == 7
    assert isinstance(g.s, nnx.BatchStat) and float(g.s.value) == 3.0
    assert float(g.p.value) == 2.0
    with pytest.raises(TypeError, match="int"):
        nnx.grad(loss, graph=False)(Lin(), X)  # the int counter needs allow_int, as in jax


def test_graph_mode_without_updates_keeps_sharing_in_the_gradient():
    p1, p2 = nnx.Param(jnp.asarray(10.0)), nnx.Param(jnp.asarray(20.0))
    tree = {"a": [p1, p2], "b": p1}
    full = nnx.grad(lambda t: t["a"][0] * t["a"][1] + t["b"])(tree)
    shared = nnx.grad(lambda t: t["a"][0] * t["a"][1] + t["b"], graph_updates=False)(tree)
    ref = jax.grad(lambda a, b: a * b + a, argnums=(0, 1))(10.0, 20.0)
    assert float(full["a"][0].value) == float(ref[0]) and full["b"] == nnx.State({})
    assert shared["b"] is shared["a"][0] and float(shared["a"][0].value) == float(ref[0])
    assert float(shared["a"][1].value) == float(ref[1])


def test_pytree_and_state_arguments_mix_nodes_and_arrays():
    m = Lin()
    x = jnp.asarray(2.0)
    g_pair = nnx.grad(lambda pair: loss(pair[0], X) * pair[1])((m, x))
    assert isinstance(g_pair[0], nnx.State) and sorted(g_pair[0]) == ["b", "w"]
    np.testing.assert_allclose(g_pair[1], loss(m, X), rtol=1e-6)
    graphdef, counts, rest = nnx.split(m, Count, ...)

    def through_state(params, rest):
        return loss(nnx.merge(graphdef, params, rest), X)

    _, params, others = nnx.split(m, nnx.Param, ...)
    g_state = nnx.grad(through_state)(params, others)
    assert isinstance(g_state, nnx.State) and isinstance(g_state["w"], nnx.Param)
    np.testing.assert_allclose(g_state["w"].value, nnx.grad(loss)(m, X)["w"].value, rtol=1e-6)


def test_grad_argument_errors():
    v = nnx.Param(jnp.asarray(1.0))
    with pytest.raises(ValueError, match="Inconsistent aliasing"):
        nnx.grad(lambda a, b: a + b, graph_updates=False)(v, v)
    with pytest.raises(ValueError, match="Duplicate"):
        nnx.grad(lambda a, b: a + b, graph=False)(v, v)
    with pytest.raises(ValueError, match="repeated"):
        nnx.grad(lambda a: a, argnums=(0, nnx.DiffState(0, ...)))
    with pytest.raises(ValueError, match="Graph nodes are not allowed as prefixes"):
        nnx.grad(lambda a: a, argnums=nnx.Dict(a=v))
    with pytest.raises(ValueError, match="cannot contain `DiffState` objects"):
        nnx.grad(lambda a: a, argnums=nnx.DiffState(0, ...), graph=False)
