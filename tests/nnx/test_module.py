"""Module: eager construction, modes, set_attributes, sow, iter_modules, repr."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, *, rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout)))
        self.bias = nnx.Param(jnp.zeros((dout,)))

    def __call__(self, x):
        return x @ self.kernel + self.bias


class Drop(nnx.Module):
    def __init__(self, deterministic=False):
        self.deterministic = deterministic


class Norm(nnx.Module):
    def __init__(self):
        self.use_running_average = False
        self.mean = nnx.BatchStat(jnp.zeros(2))


class Net(nnx.Module):
    def __init__(self, rngs):
        self.linear = Linear(2, 2, rngs=rngs)
        self.drop = Drop()
        self.blocks = [Norm(), Drop()]

    def __call__(self, x):
        y = self.linear(x)
        self.sow(nnx.Intermediate, "features", y)
        return y


def test_parameters_exist_right_after_construction():
    net = Net(nnx.Rngs(0))
    assert net.linear.kernel.shape == (2, 2)
    assert net.linear.bias.shape == (2,)
    expected = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), (2, 2)))
    np.testing.assert_allclose(net.linear.kernel.value, expected)


def test_eval_and_train_switch_every_submodule():
    net = Net(nnx.Rngs(0))
    assert net.eval() is net
    assert net.drop.deterministic is True and net.blocks[1].deterministic is True
    assert net.blocks[0].use_running_average is True
    net.train()
    assert net.drop.deterministic is False and net.blocks[0].use_running_average is False
    assert not hasattr(net.linear, "deterministic")  # modules without the flag are skipped


def test_set_attributes_with_filter_and_raise_if_not_found():
    net = Net(nnx.Rngs(0))
    net.set_attributes(Norm, use_running_average=True)
    assert net.blocks[0].use_running_average is True
    net.set_attributes(Drop, deterministic=True)
    assert net.drop.deterministic is True and net.blocks[1].deterministic is True
    with pytest.raises(ValueError, match=r"following attributes: \['dropout_rate'\]"):
        net.set_attributes(dropout_rate=0.5)
    net.set_attributes(dropout_rate=0.5, raise_if_not_found=False)
    assert not any(hasattr(m, "dropout_rate") for _, m in net.iter_modules())


def test_sow_creates_intermediate_tuple_and_appends():
    net = Net(nnx.Rngs(0))
    x = jnp.ones((1, 2))
    y1 = net(x)
    assert type(net.features) is nnx.Intermediate
    assert isinstance(net.features.value, tuple) and len(net.features.value) == 1
    net(2 * x)
    assert len(net.features.value) == 2
    np.testing.assert_allclose(net.features.value[1], 2 * np.asarray(y1), rtol=1e-6)
    popped = nnx.pop(net, nnx.Intermediate)
    assert len(popped["features"].value) == 2 and not hasattr(net, "features")


def test_sow_with_reduce_fn_and_name_string():
    class Acc(nnx.Module):
        def __call__(self, x):
            self.sow("intermediates", "total", x, reduce_fn=lambda a, b: a + b, init_fn=lambda: 0)

    acc = Acc()
    acc(3)
    acc(4)
    assert type(acc.total) is nnx.Intermediate and acc.total.value == 7


def test_sow_into_an_attribute_of_another_type_raises():
    class Bad(nnx.Module):
        def __init__(self):
            self.h = nnx.Param(jnp.zeros(1))

    with pytest.raises(ValueError, match="expected Bad.'h' to be of type 'Intermediate', got 'Param'"):
        Bad().sow(nnx.Intermediate, "h", 1)

    class Plain(nnx.Module):
        def __init__(self):
            self.h = 10

    with pytest.raises(ValueError, match="expected Plain.'h' to be a Variable, got int"):
        Plain().sow(nnx.Intermediate, "h", 1)


def test_perturb_adds_zero_variable():
    class P(nnx.Module):
        def __call__(self, x):
            return self.perturb("act", x)

    p = P()
    out = p(jnp.ones(3))
    np.testing.assert_array_equal(out, np.ones(3))
    assert type(p.act) is nnx.Perturbation
    np.testing.assert_array_equal(p.act.value, np.zeros(3))


def test_iter_modules_and_iter_children():
    net = Net(nnx.Rngs(0))
    paths = [p for p, _ in net.iter_modules()]
    assert paths == [("blocks", 0), ("blocks", 1), ("drop",), ("linear",), ()]
    assert [name for name, _ in net.iter_children()] == ["drop", "linear"]
    # the List that replaced the plain list `blocks` is a container, not a child node
    assert [k for k, _ in nnx.iter_children(net)] == ["drop", "linear"]


def test_repr_shows_the_tree():
    text = repr(Net(nnx.Rngs(0)))
    lines = text.splitlines()
    # the first line sums the Variables below, per type, as Flax does
    assert lines[0] == "Net( # BatchStat: 2 (8 B), Param: 6 (24 B), Total: 8 (32 B)"
    assert "  linear=Linear( # Param: 6 (24 B)" in lines
    assert "    kernel=Param( # 4 (16 B)" in lines
    assert "      value=Array(shape=(2, 2), dtype=float32)" in lines
    assert "  blocks=[" in lines
    assert "  drop=Drop(" in lines and "    deterministic=False" in lines
