"""nnx.jit: write-back, identity, retracing, trace errors, and a cache that is never stale."""

import collections
import dataclasses
import functools
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx
from nnx import _structure


class Count(nnx.Variable):
    pass


class Lin(nnx.Module):
    def __init__(self, din, dout, seed=0):
        key = jax.random.key(seed)
        self.w = nnx.Param(jax.random.normal(key, (din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))
        self.count = Count(jnp.array(0))

    def __call__(self, x):
        self.count += 1
        return x @ self.w + self.b


class Net(nnx.Module):
    def __init__(self):
        self.layers = [Lin(3, 3, 0), Lin(3, 3, 1)]
        self.scale = 1.0

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x * self.scale


def _uncached(model, x):
    """The same computation through split/merge/update with plain jax.jit."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, x):
        m = nnx.merge(graphdef, state)
        y = m(x)
        return y, nnx.state(m)

    y, new_state = f(state, x)
    nnx.update(model, new_state)
    return y


def test_updates_are_written_back_and_identity_kept():
    m = Lin(3, 2)
    w = m.w
    f = nnx.jit(lambda m, x: m(x))
    y = f(m, jnp.ones((1, 3)))
    np.testing.assert_allclose(y, jnp.ones((1, 3)) @ m.w.value, rtol=1e-6)
    assert int(m.count.value) == 1
    f(m, jnp.ones((1, 3)))
    assert int(m.count.value) == 2
    assert m.w is w


def test_returning_an_input_gives_the_same_object_and_new_modules_are_new():
    m = Lin(3, 2)
    assert nnx.jit(lambda m: m)(m) is m
    new = nnx.jit(lambda k: Lin(2, 2, 1))(jnp.array(0))
    assert isinstance(new, Lin) and new.w.shape == (2, 2)


def test_no_retrace_on_same_structure_and_one_retrace_per_static_change():
    traces = []

    @nnx.jit
    def f(m, x):
        traces.append(1)
        return m(x)

    m = Net()
    x = jnp.ones((2, 3))
    f(m, x)
    f(m, x)
    assert len(traces) == 1
    m.scale = 2.0
    f(m, x)
    f(m, x)
    assert len(traces) == 2


def test_mutating_captured_object_raises():
    m = Lin(3, 2)

    @nnx.jit
    def f(x):
        m.count.value = m.count.value + 1
        return x

    with pytest.raises(nnx.TraceContextError, match="Count"):
        f(1.0)


def test_returning_captured_module_raises():
    m = Lin(3, 2)
    with pytest.raises(nnx.TraceContextError, match="captured"):
        nnx.jit(lambda x: m)(1.0)


def test_structure_change_inside_is_carried_out():
    m = Lin(3, 2)

    @nnx.jit
    def f(m):
        m.extra = nnx.Param(jnp.ones(2))
        m.sow(nnx.Intermediate, "seen", jnp.array(3.0))

    f(m)
    assert m.extra.shape == (2,)
    assert isinstance(m.seen, nnx.Intermediate) and float(m.seen.value[0]) == 3.0


def test_shared_variable_between_two_arguments_stays_shared():
    a, b = Lin(3, 3), Lin(3, 3)
    b.w = a.w

    @nnx.jit
    def f(a, b):
        a.w.value = a.w.value + 1.0

    before = np.asarray(a.w.value)
    f(a, b)
    assert b.w is a.w
    np.testing.assert_allclose(b.w.value, before + 1.0)


def test_static_argnums_and_donation():
    m = Lin(3, 2)

    @nnx.jit(static_argnums=1, donate_argnums=0)
    def f(m, power):
        m.w.value = m.w.value ** power
        return m.w.value.sum()

    expected = float((m.w.value ** 2).sum())
    assert float(f(m, 2)) == pytest.approx(expected, rel=1e-5)


def test_method_decorator():
    class M(nnx.Module):
        def __init__(self):
            self.c = Count(jnp.array(0))

        @nnx.jit
        def step(self, n):
            self.c.value += n
            return self.c.value

    m = M()
    assert int(m.step(2)) == 2
    assert int(m.step(3)) == 5


# -- the cache must never be stale: change the graph by every route between two calls ------


def _check_equal(f, m, x):
    reference = nnx.clone(m)
    y = f(m, x)
    y_ref = _uncached(reference, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    for (p1, v1), (p2, v2) in zip(
        nnx.state(m).flat_state(), nnx.state(reference).flat_state(), strict=True
    ):
        assert p1 == p2
        np.testing.assert_allclose(v1.value, v2.value, rtol=1e-6)


def test_cache_follows_every_structural_route():
    f = nnx.jit(lambda m, x: m(x))
    m = Net()
    x = jnp.ones((2, 3))
    _check_equal(f, m, x)
    m.scale = 3.0  # attribute set
    _check_equal(f, m, x)
    m.layers.append(Lin(3, 3, 2))  # list append
    _check_equal(f, m, x)
    m.layers.pop(0)  # list pop
    _check_equal(f, m, x)
    m.layers[0] = Lin(3, 3, 5)  # item assignment
    _check_equal(f, m, x)
    m.layers[0].w = nnx.Param(jnp.eye(3))  # a Variable replaced by a new one
    _check_equal(f, m, x)
    vars(m.layers[1])["w"] = nnx.Param(2 * jnp.eye(3))  # surgery through vars()
    _check_equal(f, m, x)
    m.layers[1].b.value = jnp.full((3,), 0.5)  # value change only (no retrace needed)
    _check_equal(f, m, x)
    del m.scale  # attribute delete: __call__ now fails the same way uncached would
    m.scale = 1.5
    _check_equal(f, m, x)


def test_cache_follows_dict_mutation_and_iter_graph_surgery():
    class D(nnx.Module):
        def __init__(self):
            self.blocks = {"a": Lin(3, 3, 0)}

        def __call__(self, x):
            for k in sorted(self.blocks):
                x = self.blocks[k](x)
            return x

    f = nnx.jit(lambda m, x: m(x))
    m = D()
    x = jnp.ones((1, 3))
    _check_equal(f, m, x)
    m.blocks["b"] = Lin(3, 3, 1)
    _check_equal(f, m, x)
    for _, node in list(nnx.iter_graph(m)):
        if isinstance(node, nnx.Module):
            for name, value in list(vars(node).items()):
                if isinstance(value, Lin):
                    setattr(node, name, Lin(3, 3, 7))
    for key in list(m.blocks):
        m.blocks[key] = Lin(3, 3, 9)
    _check_equal(f, m, x)


def test_cache_follows_train_eval_flips():
    class M(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.drop(self.lin(x))

    f = nnx.jit(lambda m, x: m(x))
    m = M()
    x = jnp.ones((4, 3))
    m.eval()
    y_eval = f(m, x)
    np.testing.assert_allclose(y_eval, m.lin(x), rtol=1e-6)
    m.train()
    y_train = f(m, x)
    assert np.any(np.asarray(y_train) == 0.0)
    m.eval()
    np.testing.assert_allclose(f(m, x), y_eval, rtol=1e-6)


def test_submodule_replaced_from_callback_mid_loop():
    f = nnx.jit(lambda m, x: m(x))
    m = Net()
    x = jnp.ones((2, 3))

    def callback(step):
        if step == 2:
            m.layers[1] = Lin(3, 3, 11)

    for step in range(4):
        callback(step)
        _check_equal(f, m, x)


def test_steady_state_path_notices_other_objects_and_argument_kinds():
    @nnx.jit
    def f(a, b):
        if isinstance(a, nnx.Module):
            a.w[...] += 1
            return a.w[...] * b
        return a * b.w[...]

    class W(nnx.Module):
        def __init__(self, v):
            self.w = nnx.Param(jnp.asarray(v))

    m1, m2 = W(1.0), W(10.0)
    assert float(f(m1, 2.0)) == 4.0
    assert float(f(m1, jnp.asarray(2.0))) == 6.0  # cached: same objects, array in the same place
    assert float(f(m2, jnp.asarray(2.0))) == 22.0  # another Module
    assert float(m1.w[...]) == 3.0 and float(m2.w[...]) == 11.0
    assert float(f(jnp.asarray(2.0), m1)) == 6.0  # node and array swap places
    assert float(f(m1, jnp.asarray(1.0))) == 4.0


# -- containers the structure version does not see ---------------------------------------


class Holder(nnx.Module):
    """Params reached through containers that are not graph nodes."""

    def __init__(self, make):
        self.c = make()

    def total(self):
        return sum(v[...].sum() for v in jax.tree.leaves(self.c, is_leaf=_is_var))


def _is_var(x):
    return isinstance(x, nnx.Variable)


@dataclasses.dataclass
class Box:
    items: list


jax.tree_util.register_dataclass(Box, data_fields=["items"], meta_fields=[])
Pair = collections.namedtuple("Pair", ["first", "second"])


def _p(n):
    return nnx.Param(jnp.full((n,), 1.0))


@pytest.mark.parametrize(
    "make, edit",
    [
        (lambda: ({"w": _p(2)},), lambda c: c[0].__setitem__("x", _p(3))),  # dict in a tuple
        (lambda: collections.OrderedDict(w=_p(2)), lambda c: c.__setitem__("x", _p(3))),
        (lambda: collections.defaultdict(list, w=_p(2)), lambda c: c.__setitem__("x", _p(3))),
        (lambda: (Box([_p(2)]),), lambda c: c[0].items.append(_p(3))),  # dataclass
        (lambda: Pair({"a": _p(2)}, [_p(1)]), lambda c: c.second.append(_p(3))),  # namedtuple
        (lambda: ([_p(2)],), lambda c: c[0].__setitem__(0, _p(5))),  # a Variable replaced
    ],
    ids=["tuple-dict", "OrderedDict", "defaultdict", "dataclass", "namedtuple-list", "replace"],
)
def test_cache_sees_edits_inside_untracked_containers(make, edit):
    m = Holder(make)
    f = nnx.jit(lambda m: m.total())
    assert float(f(m)) == float(m.total())
    assert float(f(m)) == float(m.total())  # a second call: would be the cached one
    edit(m.c)
    assert float(f(m)) == float(m.total()) != 2.0


def test_static_values_in_untracked_containers_are_read_fresh():
    class S(nnx.Module):
        def __init__(self):
            self.cfg = ({"scale": 2.0},)
            self.w = nnx.Param(jnp.ones(3))

        def __call__(self):
            return self.w[...].sum() * self.cfg[0]["scale"]

    m = S()
    f = nnx.jit(lambda m: m())
    assert float(f(m)) == 6.0
    m.cfg[0]["scale"] = 3.0
    assert float(f(m)) == 9.0


def test_tracked_containers_keep_the_fast_path():
    class T(nnx.Module):
        def __init__(self):
            self.layers = [Lin(2, 2)]
            self.named = {"a": Lin(2, 2, 1)}
            self.pair = (Lin(2, 2, 2), 3)

    m = T()
    opt = nnx.Optimizer(m, optax.adam(1e-3))
    f = nnx.jit(lambda m, opt: m.layers[0].w[...].sum())
    f(m, opt)
    assert f._fast is not None  # lists, dicts, tuples and the optimizer's States are tracked
    m.named["b"] = Lin(2, 2, 3)
    opt.opt_state[0].mu["extra"] = nnx.OptState(jnp.zeros(2))  # a tracked State edit
    f(m, opt)
    assert f._fast is not None and f._fast.version == _structure.version()


# -- no tracer left in a captured Module -------------------------------------------------


def _counter():
    m = Lin(3, 2)
    step = nnx.jit(lambda m: m(jnp.ones((1, 3))))
    return m, step


def test_captured_module_inside_jax_jit_raises_on_the_first_call():
    m, step = _counter()

    @jax.jit
    def outer(x):
        return step(m).sum() + x

    with pytest.raises(nnx.TraceContextError, match="'count'"):
        outer(1.0)
    assert isinstance(m.count[...], jax.Array) and int(m.count[...]) == 0


def test_captured_module_inside_jax_jit_raises_on_a_cached_call():
    m, step = _counter()
    step(m)  # bound at the top level: the fast path is warm
    assert step._fast is not None

    @jax.jit
    def outer(x):
        return step(m).sum() + x

    with pytest.raises(nnx.TraceContextError, match="'count'"):
        outer(1.0)
    assert not isinstance(m.count[...], jax.core.Tracer) and int(m.count[...]) == 1
    step(m)  # the top level still works, through the fast path
    assert int(m.count[...]) == 2


def test_captured_module_read_only_inside_jax_jit_works():
    m = Lin(3, 2)
    forward = nnx.jit(lambda m, x: x @ m.w[...] + m.b[...])
    x = jnp.ones((1, 3))
    forward(m, x)

    @jax.jit
    def outer(x):
        return forward(m, x)

    np.testing.assert_allclose(outer(x), x @ m.w[...] + m.b[...], rtol=1e-6)
    assert not isinstance(m.w[...], jax.core.Tracer)


def test_other_transforms_inside_jax_jit_raise_instead_of_leaking():
    m = Lin(3, 2)

    def loss(m):
        return m(jnp.ones((1, 3))).sum()

    @jax.jit
    def outer(x):
        return nnx.grad(loss)(m)["w"][...].sum() + x

    with pytest.raises(nnx.TraceContextError, match="'count'"):
        outer(1.0)
    assert not isinstance(m.count[...], jax.core.Tracer)


# -- caches hold no user objects ---------------------------------------------------------


def test_deleted_model_and_argument_array_are_freed():
    @nnx.jit
    def step(m, x):
        m.count[...] += 1
        return m(x)

    m, x = Lin(3, 2), jnp.ones((2, 3))
    step(m, x)
    step(m, x)  # the fast path too
    refs = [weakref.ref(m), weakref.ref(m.w), weakref.ref(m.w[...]), weakref.ref(x)]
    del m, x
    gc.collect()
    assert [r() for r in refs] == [None] * 4


def test_compiled_programs_are_bounded():
    traces = []

    @functools.partial(nnx.jit, static_argnums=1)
    def f(x, k):
        traces.append(k)
        return x + k

    f._programs.maxsize = 3
    x = jnp.zeros(2)
    for k in (0, 1, 2, 0, 3, 4):
        assert float(f(x, k)[0]) == k
    assert traces == [0, 1, 2, 3, 4]  # one trace per static signature
    assert len(f._programs) == 3
    kept = [static_args for _, static_args, *_ in f._programs._items]
    assert kept[-1] == ((1, 4),)  # the newest is kept, the oldest dropped


def test_cached_partial_calls_with_the_cached_objects_through_the_fast_path():
    m = Lin(3, 2)
    step = nnx.jit(lambda m, x: m(x))
    cached = nnx.cached_partial(step, m)
    x = jnp.ones((1, 3))
    np.testing.assert_allclose(cached(x), x @ m.w[...] + m.b[...], rtol=1e-6)
    cached(x)
    assert step._fast is not None and int(m.count[...]) == 2
    with pytest.raises(ValueError, match="graph-mode-only"):
        nnx.cached_partial(step, m, graph=False)
