"""Variables: value access, metadata, operators, in-place updates, pytree behaviour."""

import copy
import operator
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import nnx


def test_value_get_value_set_value_and_ellipsis_index():
    v = nnx.Param(jnp.arange(3.0))
    np.testing.assert_array_equal(v.value, [0.0, 1.0, 2.0])
    assert v.get_value() is v.value
    assert v[...] is v.value
    v.set_value(jnp.ones(3))
    np.testing.assert_array_equal(v.value, np.ones(3))
    v.value = jnp.zeros(3)
    np.testing.assert_array_equal(v[...], np.zeros(3))
    v[...] = jnp.full(3, 4.0)
    np.testing.assert_array_equal(v.value, np.full(3, 4.0))


def test_setitem_with_index_updates_one_entry():
    v = nnx.Param(jnp.zeros(4))
    v[1] = 7.0
    np.testing.assert_array_equal(v.value, [0.0, 7.0, 0.0, 0.0])
    n = nnx.Variable(np.zeros(2))
    n[0] = 3.0
    np.testing.assert_array_equal(n.value, [3.0, 0.0])


def test_variable_wrapping_a_variable_takes_its_value_and_metadata():
    inner = nnx.Param(jnp.ones(2), role="w")
    outer = nnx.BatchStat(inner, extra=1)
    assert outer.value is inner.value
    assert outer.get_metadata(exclude_required=True) == {"role": "w", "extra": 1}


def test_metadata_readable_as_attribute_and_get_metadata():
    v = nnx.Param(jnp.ones((2, 2)), sharding=("data", None), note="k")
    assert v.sharding == ("data", None)
    assert v.get_metadata("note") == "k"
    assert v.get_metadata(exclude_required=True) == {"sharding": ("data", None), "note": "k"}
    assert v.get_metadata("absent", None) is None
    assert v.has_metadata("note") and not v.has_metadata("absent")
    with pytest.raises(KeyError, match="no metadata 'absent'"):
        v.get_metadata("absent")
    with pytest.raises(AttributeError, match="no metadata or value attribute 'missing'"):
        _ = v.missing


def test_set_and_delete_metadata():
    v = nnx.Param(jnp.ones(2))
    v.set_metadata("a", 1)
    v.set_metadata(b=2)
    v.c = 3
    assert (v.a, v.b, v.c) == (1, 2, 3)
    del v.c
    assert not v.has_metadata("c")


def test_arithmetic_and_reflected_operators():
    v = nnx.Param(jnp.array([1.0, 2.0, 4.0]))
    x = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(v + 1, x + 1)
    np.testing.assert_allclose(1 + v, 1 + x)
    np.testing.assert_allclose(10 - v, 10 - x)
    np.testing.assert_allclose(v - 10, x - 10)
    np.testing.assert_allclose(v * v, x * x)
    np.testing.assert_allclose(2 / v, 2 / x)
    np.testing.assert_allclose(v**2, x**2)
    np.testing.assert_allclose(2**v, 2**x)
    np.testing.assert_allclose(-v, -x)
    np.testing.assert_allclose(abs(-v), x)
    np.testing.assert_allclose(v // 3, x // 3)
    np.testing.assert_allclose(7 % v, 7 % x)
    i = nnx.Variable(jnp.array([6, 3]))
    np.testing.assert_array_equal(i & 2, [2, 2])
    np.testing.assert_array_equal(1 << i, [64, 8])


_FLOAT_OPS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.mod, operator.pow, operator.matmul, operator.lt, operator.le, operator.gt,
    operator.ge, operator.eq, operator.ne,
]
_INT_OPS = [operator.and_, operator.or_, operator.xor, operator.lshift, operator.rshift]


class _Holds(nnx.Module):
    def __init__(self, value):
        self.w = nnx.Param(value)


@pytest.mark.parametrize("op", _FLOAT_OPS + _INT_OPS, ids=lambda op: op.__name__)
def test_numpy_operand_on_the_left_defers_to_the_variable_under_jit_and_grad(op):
    integer = op in _INT_OPS
    dtype = np.int32 if integer else np.float32
    x = np.array([[3, 1], [2, 5]], dtype)  # numpy on the left
    w = np.array([[2, 1], [1, 2]], dtype)
    m = _Holds(jnp.asarray(w))
    expected = op(x, w)
    got = nnx.jit(lambda m: op(x, m.w))(m)
    assert isinstance(got, jax.Array)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(op(x, m.w), expected, rtol=1e-6)  # eager too
    if integer or op in (operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne):
        return
    grads = nnx.grad(lambda m: jnp.sum(op(x, m.w)))(m)
    ref = jax.grad(lambda w: jnp.sum(op(jnp.asarray(x), w)))(jnp.asarray(w))
    np.testing.assert_allclose(grads["w"][...], ref, rtol=1e-5)


def test_comparison_operators_act_on_values():
    v = nnx.Param(jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(v < 2, [True, False, False])
    np.testing.assert_array_equal(v >= 2, [False, True, True])
    np.testing.assert_array_equal(v == 2, [False, True, False])
    np.testing.assert_array_equal(v != 2, [True, False, True])
    assert {v: 1}[v] == 1  # still hashable, by identity


def test_indexing_len_iter_and_conversions():
    v = nnx.Param(jnp.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(v[1], [3.0, 4.0, 5.0])
    np.testing.assert_array_equal(v[:, 0], [0.0, 3.0])
    assert len(v) == 2
    assert [row.shape for row in v] == [(3,), (3,)]
    s = nnx.Variable(jnp.array(3))
    assert int(s) == 3 and float(s) == 3.0 and bool(s) is True
    assert [10, 11, 12, 13][s] == 13  # __index__


def test_jax_functions_accept_variables():
    v = nnx.Param(jnp.array([[1.0, 2.0], [3.0, 4.0]]))
    assert float(jnp.sum(v)) == 10.0
    x = jnp.array([1.0, 1.0])
    np.testing.assert_allclose(x @ v, [4.0, 6.0])
    np.testing.assert_allclose(v @ x, [3.0, 7.0])
    np.testing.assert_allclose(np.asarray(v), [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(jax.jit(lambda a: a * 2)(v.value), [[2.0, 4.0], [6.0, 8.0]])


def test_in_place_operators_keep_identity():
    v = nnx.Variable(jnp.array(0))
    same = v
    v += 1
    assert v is same and int(v.value) == 1
    v *= 5
    assert v is same and int(v.value) == 5
    v[...] += 1
    assert v is same and int(v.value) == 6
    v -= 2
    assert int(same.value) == 4


def test_in_place_operator_on_module_attribute_updates_the_variable():
    class Counter(nnx.Module):
        def __init__(self):
            self.count = nnx.BatchStat(jnp.array(0))

    c = Counter()
    variable = c.count
    c.count += 1
    c.count += 1
    assert c.count is variable and int(variable.value) == 2


def test_shape_dtype_ndim_size():
    v = nnx.Param(jnp.zeros((2, 3), dtype=jnp.float16))
    assert v.shape == (2, 3)
    assert v.dtype == jnp.float16
    assert (v.ndim, v.size) == (2, 6)
    assert nnx.Variable(1.5).shape == ()


def test_repr_shows_type_shape_dtype_and_metadata():
    v = nnx.Param(jnp.zeros((2, 3)), note="k")
    text = repr(v)
    assert text.startswith("Param(")
    assert "shape=(2, 3)" in text and "float32" in text
    assert "note='k'" in text
    assert "6 (24 B)" in text
    assert "Array(5, dtype=int32)" in repr(nnx.Variable(jnp.array(5)))


def test_user_subclass_is_a_variable_everywhere():
    class Count(nnx.Variable):
        pass

    class Scaled(nnx.Param):
        def __init__(self, value, *, scale):
            super().__init__(value * scale, scale=scale)

    class Net(nnx.Module):
        def __init__(self):
            self.n = Count(jnp.array(0))
            self.w = Scaled(jnp.ones(2), scale=3.0)

    net = Net()
    np.testing.assert_array_equal(net.w.value, [3.0, 3.0])
    assert list(nnx.state(net, Count)) == ["n"]
    assert list(nnx.state(net, nnx.Param)) == ["w"]
    mapped = jax.tree.map(lambda x: x + 1, net.w)
    assert type(mapped) is Scaled and mapped.scale == 3.0
    np.testing.assert_array_equal(mapped.value, [4.0, 4.0])


def test_tree_map_keeps_type_and_metadata():
    v = nnx.BatchStat(jnp.array([1.0, 2.0]), note="stat")
    doubled = jax.tree.map(lambda x: x * 2, v)
    assert type(doubled) is nnx.BatchStat and doubled is not v
    assert doubled.note == "stat"
    np.testing.assert_array_equal(doubled.value, [2.0, 4.0])
    np.testing.assert_array_equal(v.value, [1.0, 2.0])
    leaves, treedef = jax.tree.flatten(v)
    assert len(leaves) == 1 and leaves[0] is v.value
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(v)[0]]
    assert paths == [".value"]


def test_variable_through_jax_jit():
    v = nnx.Param(jnp.array([1.0, 2.0]), note="n")
    out = jax.jit(lambda p: jax.tree.map(lambda x: x * 3, p))(v)
    assert type(out) is nnx.Param and out.note == "n"
    np.testing.assert_array_equal(out.value, [3.0, 6.0])


def test_pickle_and_deepcopy():
    v = nnx.Param(jnp.array([1.0, 2.0]), note="n")
    for clone in (pickle.loads(pickle.dumps(v)), copy.deepcopy(v)):
        assert type(clone) is nnx.Param and clone is not v
        assert clone.note == "n"
        np.testing.assert_array_equal(clone.value, [1.0, 2.0])


def test_copy_gives_new_variable_with_same_metadata():
    v = nnx.Param(jnp.ones(2), note="n")
    c = v.copy(jnp.zeros(2), extra=1)
    assert type(c) is nnx.Param and c is not v
    assert c.get_metadata(exclude_required=True) == {"note": "n", "extra": 1}
    np.testing.assert_array_equal(v.value, np.ones(2))


def test_builtin_variable_types():
    assert issubclass(nnx.LoRAParam, nnx.Param)
    for t in (nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, nnx.OptState):
        assert issubclass(t, nnx.Variable)
    assert issubclass(nnx.RngKey, nnx.RngState) and issubclass(nnx.RngCount, nnx.RngState)


def test_with_metadata_initializer_adds_metadata():
    init = nnx.with_metadata(lambda shape: jnp.ones(shape), sharding=("model",))
    p = nnx.Param(init((2,)))
    assert p.sharding == ("model",)
    np.testing.assert_array_equal(p.value, [1.0, 1.0])


# -- Flax 0.12 parity: generics, get/set_value overrides, required metadata, defaults ----------


def test_variable_types_are_generic_annotations():
    annotated = nnx.Param[jax.Array]
    assert annotated.__origin__ is nnx.Param
    p = nnx.Param[int](3)  # the alias still constructs the Variable
    assert type(p) is nnx.Param and p[...] == 3
    assert not p.has_metadata("__orig_class__")

    class Broadcast(nnx.Variable[nnx.A]):
        pass

    assert issubclass(Broadcast, nnx.Variable) and nnx.BatchStat[int].__origin__ is nnx.BatchStat


class _PlusThree(nnx.Param):
    def get_value(self, **kwargs):
        return super().get_value(**kwargs) + 3


class _PlusSeven(nnx.Param):
    def set_value(self, value, **kwargs):
        super().set_value(value + 7, **kwargs)


def test_get_value_override_is_used_by_every_read():
    x = _PlusThree(jnp.array([1, 2]))
    np.testing.assert_array_equal(x[...], [4, 5])
    np.testing.assert_array_equal(x[1], 5)
    np.testing.assert_array_equal(x.value, [4, 5])
    np.testing.assert_array_equal(x + 1, [5, 6])
    np.testing.assert_array_equal(jnp.asarray(x), [4, 5])
    np.testing.assert_array_equal(x.get_raw_value(), [1, 2])
    np.testing.assert_array_equal(nnx.state(_Holds(x))["w"].get_raw_value(), [1, 2])


def test_set_value_override_is_used_by_every_write():
    x = _PlusSeven(jnp.array(1))
    x[...] = 5
    assert x.get_raw_value() == 12
    x.value = 1
    assert x.get_raw_value() == 8
    x += 1
    assert x.get_raw_value() == 16
    x.set_raw_value(jnp.array(0))
    assert x.get_raw_value() == 0


def test_every_variable_records_required_metadata():
    v = nnx.Variable(jnp.array(1.0))
    assert v.get_metadata() == {"hijax": False, "ref": False, "eager_sharding": True}
    assert v.get_metadata(exclude_required=True) == {}
    assert "hijax" not in repr(v)  # defaults are not shown
    mapped = jax.tree.map(lambda a: a + 1, nnx.Param(jnp.ones(2), note="n"))
    assert mapped.get_metadata() == {"note": "n", "hijax": False, "ref": False, "eager_sharding": True}


def test_set_metadata_forms():
    v = nnx.Variable(jnp.array(1.0))
    v.set_metadata("out_sharding", ("x",))
    v.set_metadata(a=1)
    assert (v.get_metadata("out_sharding"), v.a) == (("x",), 1)
    v.set_metadata({"b": 3})  # a mapping replaces everything but the required entries
    assert v.get_metadata() == {"b": 3, "hijax": False, "ref": False, "eager_sharding": True}
    with pytest.raises(ValueError, match="'hijax' metadata cannot change"):
        v.set_metadata(hijax=True)
    with pytest.raises(ValueError, match="'ref' metadata cannot be deleted"):
        v.del_metadata("ref")
    with pytest.raises(TypeError, match="not both"):
        v.set_metadata("a", 1, c=2)


def test_set_metadata_on_a_module_with_a_filter():
    class Two(nnx.Module):
        def __init__(self):
            self.v = nnx.Variable(jnp.array(0.0))
            self.p = nnx.Param(jnp.array(1.0))

    m = Two()
    nnx.set_metadata(m, foo="bar")
    nnx.set_metadata(m, differentiable=False, only=nnx.Param)
    assert m.v.get_metadata("foo") == "bar" and m.p.get_metadata("foo") == "bar"
    assert m.p.get_metadata("differentiable") is False
    assert not m.v.has_metadata("differentiable")
    assert m.v.get_metadata("hijax") is False


def test_var_defaults_context_bare_call_and_decorator():
    assert dict(nnx.var_defaults()) == {"hijax": False, "ref": False}
    with nnx.var_defaults(ref=False):
        nnx.var_defaults(hijax=True)  # a bare call lasts until the enclosing block ends
        assert nnx.var_defaults().hijax is True
        with pytest.raises(ValueError, match="no hijax or mutable-array Variables"):
            nnx.Variable(jnp.array(1.0))
    assert nnx.var_defaults().hijax is False

    @nnx.var_defaults(hijax=True)
    def inside():
        return nnx.var_defaults().hijax

    assert nnx.var_defaults().hijax is False
    assert inside() is True and nnx.var_defaults().hijax is False


def test_eager_sharding_can_be_turned_off():
    mesh = jax.make_mesh((1,), ("a",))
    with jax.set_mesh(mesh):
        sharded = nnx.Param(jnp.ones(2), out_sharding=("a",))
        with nnx.use_eager_sharding(False):
            assert nnx.using_eager_sharding() is False
            plain = nnx.Param(jnp.ones(2), out_sharding=("a",))
        assert nnx.using_eager_sharding() is True
    assert sharded.get_raw_value().sharding == jax.sharding.NamedSharding(mesh, P("a"))
    assert plain.eager_sharding is False
    assert plain.get_raw_value().sharding.spec == P(None)  # left as created (replicated)
