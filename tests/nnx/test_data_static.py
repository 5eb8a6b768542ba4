"""Data or static: nnx.data / nnx.static marks, class declarations, the checks, nnx.dataclass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Foo(nnx.Pytree):
    def __init__(self, a, b, c):
        self.a = nnx.data(a)
        self.b = nnx.static(b)
        self.c = c


def test_marks_choose_the_kind_and_stay_when_reassigned():
    foo = Foo(1, 2, jnp.array(3))
    assert len(jax.tree.leaves(foo)) == 2  # a (marked data) and c (an array)
    foo.a = 3
    assert jax.tree.leaves(foo)[0] == 3  # still data
    foo.a = nnx.static(3)
    assert len(jax.tree.leaves(foo)) == 1
    foo.b = nnx.data(4)
    assert len(jax.tree.leaves(foo)) == 2
    assert foo.b == 4  # the mark is unwrapped


def test_data_found_by_value_stays_data_when_reassigned():
    foo = Foo(1, 2, jnp.array(3))
    foo.c = 5  # c was data (an array): it stays data, as in Flax
    assert 5 in jax.tree.leaves(foo)
    copy = jax.tree.map(lambda x: 0, foo)
    assert jax.tree.structure(copy) == jax.tree.structure(foo)


def test_static_holding_data_raises_with_the_fix():
    foo = Foo(1, 2, jnp.array(3))
    with pytest.raises(ValueError, match="Found data in value of type ArrayImpl annotated with"):
        foo.b = nnx.static(jnp.array(4))
    foo.a = nnx.static(1)
    with pytest.raises(ValueError, match=r"(?s)Found data on value of type list .*'a'.*nnx.List"):
        foo.a = ["hi", jnp.array(6)]


def test_plain_list_static_at_assignment_then_holding_arrays_raises_after_init():
    class Bad(nnx.Module):
        def __init__(self):
            self.ls = []
            self.ls.append(jnp.array(1))

    with pytest.raises(ValueError, match="Found unexpected data on value of type List in the static attribute 'ls'"):
        Bad()

    class Good(nnx.Module):
        def __init__(self):
            self.layers = []
            self.layers.append(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))  # graph nodes are allowed
            self.values = [jnp.zeros(1)]  # holds data when assigned: data

    good = Good()
    assert {"/".join(map(str, p)) for p, _ in nnx.state(good).flat_state()} == {
        "layers/0/bias", "layers/0/kernel", "values/0"
    }


def test_is_data_and_has_data_follow_flax():
    assert nnx.is_data(jnp.array(0)) and nnx.is_data(nnx.Param(1)) and nnx.is_data(nnx.Rngs(0))
    assert not nnx.is_data("hello") and not nnx.is_data(42)
    assert not nnx.is_data([1, 2.0, jnp.array(1)])  # containers are not, whatever they hold
    p = nnx.Param(1)
    assert nnx.has_data([1, p, {"x": "s"}]) == [p]


def test_registered_data_type_is_data():
    @nnx.register_data_type
    @dataclasses.dataclass(frozen=True)
    class Token:
        value: int

    class Holder(nnx.Pytree):
        def __init__(self):
            self.t = Token(3)
            self.s = "static"

    assert nnx.is_data(Token(1))
    assert jax.tree.leaves(Holder()) == [Token(3)]


def test_dataclass_field_forms():
    @nnx.dataclass
    class Bar(nnx.Pytree):
        a: int = nnx.static()
        b: jax.Array = nnx.data()
        c: int = nnx.data(default=3)

    bar = Bar(a=1, b=jnp.array(2))
    assert [int(x) for x in jax.tree.leaves(bar)] == [2, 3]
    assert "Bar(" in repr(bar)  # nnx.dataclass keeps the nnx repr

    @nnx.dataclass
    class StaticArray(nnx.Pytree):
        a: jax.Array = nnx.static()

    with pytest.raises(ValueError, match="Found unexpected data on value of type ArrayImpl"):
        StaticArray(a=jnp.array(3))

    with pytest.raises(TypeError, match="either one value .* or dataclass field keywords"):
        nnx.data(1, default=2)


def test_annotations_declare_kinds():
    @dataclasses.dataclass
    class Annotated(nnx.Pytree):
        a: nnx.Data[int]
        b: nnx.Static[int]
        c: jax.Array

    x = Annotated(a=1, b=2, c=jnp.array(3))
    assert len(jax.tree.leaves(x)) == 2
    x.b = nnx.data(4)  # a mark overrides the declaration
    assert len(jax.tree.leaves(x)) == 3


def test_declared_plain_list_follows_flax():
    @nnx.dataclass
    class Filters(nnx.Module):
        filters: list

    with pytest.raises(ValueError, match="Found data on value of type list"):
        Filters([nnx.Variable(1)])


def test_list_and_dict_items_take_marks_which_never_leak():
    ls = nnx.List([nnx.data(10), nnx.static("hello"), nnx.data(20), jnp.array(1.0), 3])
    assert ls[0] == 10 and ls[1] == "hello"  # values, not markers
    leaves, treedef = jax.tree.flatten(ls)
    assert leaves[:2] == [10, 20] and len(leaves) == 3
    back = jax.tree.unflatten(treedef, [2 * x for x in leaves])
    assert list(back)[:3] == [20, "hello", 40] and jax.tree.leaves(back)[:2] == [20, 40]
    ls.insert(0, nnx.data(0))
    assert jax.tree.leaves(ls)[:3] == [0, 10, 20]
    d = nnx.Dict(a=nnx.data(1), b=2)
    assert jax.tree.leaves(d) == [1]
    with pytest.raises(ValueError, match="cannot be nested inside other containers"):
        nnx.List([[nnx.data(1)]])


def test_pytree_false_skips_the_checks():
    class Free(nnx.Module, pytree=False):
        def __init__(self):
            self.ls = [jnp.array(1)]

    assert [int(v) for _, v in nnx.state(Free()).flat_state()] == [1]


def test_check_pytree_and_merge_keep_kinds():
    foo = Foo(1, 2, jnp.array(3))
    nnx.check_pytree(foo)
    merged = nnx.merge(*nnx.split(foo))
    np.testing.assert_array_equal(merged.c, 3)
    merged.c = 7  # data after merge too
    assert 7 in jax.tree.leaves(merged)
