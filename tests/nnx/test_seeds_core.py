"""Seed examples that need only the nnx core, run with ``import nnx``.

Seed 001 ("Flax Basics"): The Module System, Stateful Computation, The Functional API.
Seed 004 ("Why Flax NNX?"): the hand-written BatchNorm (indentation restored).
The seed code is kept as written apart from ``import nnx``; each test asserts what the text
says the example shows, against numpy computations.
"""

import jax
import jax.numpy as jnp
import numpy as np

import nnx

# -- seed 001: The Module System --------------------------------------------------------------


class Linear(nnx.Module):
  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
    key = rngs.params()
    self.w = nnx.Param(jax.random.uniform(key, (din, dout)))
    self.b = nnx.Param(jnp.zeros((dout,)))
    self.din, self.dout = din, dout

  def __call__(self, x: jax.Array):
    return x @ self.w + self.b


def test_seed001_module_system_linear(capsys):
    model = Linear(2, 5, rngs=nnx.Rngs(params=0))
    y = model(x=jnp.ones((1, 2)))

    print(y)
    nnx.display(model)

    # parameters exist eagerly, held by the module; din/dout are static attributes
    w = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(0), 0), (2, 5)))
    np.testing.assert_allclose(model.w.value, w)
    np.testing.assert_allclose(y, np.ones((1, 2)) @ w, rtol=1e-6)
    assert y.shape == (1, 5)
    assert (model.din, model.dout) == (2, 5)
    assert sorted(nnx.state(model)) == ["b", "w"]
    out = capsys.readouterr().out
    assert "Linear(" in out and "w=Param(" in out and "din=2" in out


# -- seed 001: Stateful Computation -----------------------------------------------------------


class Count(nnx.Variable): pass  # noqa: E701 - as written in the seed


class Counter(nnx.Module):
  def __init__(self):
    self.count = Count(jnp.array(0))

  def __call__(self):
    self.count += 1


def test_seed001_stateful_counter(capsys):
    counter = Counter()
    print(f'{counter.count.value = }')
    counter()
    print(f'{counter.count.value = }')

    assert capsys.readouterr().out.splitlines() == [
        "counter.count.value = Array(0, dtype=int32, weak_type=True)",
        "counter.count.value = Array(1, dtype=int32, weak_type=True)",
    ]
    assert int(counter.count.value) == 1
    assert type(counter.count) is Count


# -- seed 001: The Functional API -------------------------------------------------------------


class StatefulLinear(nnx.Module):
  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
    self.w = nnx.Param(jax.random.uniform(rngs(), (din, dout)))
    self.b = nnx.Param(jnp.zeros((dout,)))
    self.count = Count(jnp.array(0, dtype=jnp.uint32))

  def __call__(self, x: jax.Array):
    self.count += 1
    return x @ self.w + self.b


def test_seed001_functional_api_split_merge_update(capsys):
    model = StatefulLinear(din=3, dout=5, rngs=nnx.Rngs(0))
    y = model(jnp.ones((1, 3)))

    nnx.display(model)
    assert int(model.count.value) == 1
    w = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(0), 0), (3, 5)))
    np.testing.assert_allclose(y, np.ones((1, 3)) @ w, rtol=1e-6)

    # State and GraphDef
    graphdef, state = nnx.split(model)

    nnx.display(graphdef, state)
    assert isinstance(graphdef, nnx.GraphDef) and isinstance(state, nnx.State)
    assert sorted(state) == ["b", "count", "w"]

    # Split, Merge, and Update
    print(f'{model.count.value = }')

    # 1. Use split to create a pytree representation of the Module
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> tuple[jax.Array, nnx.State]:
      # 2. Use merge to create a new model inside the JAX transformation
      model = nnx.merge(graphdef, state)
      # 3. Call the Module
      y = model(x)
      # 4. Use split to propagate State updates
      _, state = nnx.split(model)
      return y, state

    y, state = forward(graphdef, state, x=jnp.ones((1, 3)))
    assert int(model.count.value) == 1  # nothing written back yet
    # 5. Update the state of the original Module
    nnx.update(model, state)

    print(f'{model.count.value = }')

    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "model.count.value = Array(1, dtype=uint32)",
        "model.count.value = Array(2, dtype=uint32)",
    ]
    np.testing.assert_allclose(y, np.ones((1, 3)) @ w, rtol=1e-6)

    # Fine-grained State Control: use Variable type filters to split into multiple States
    graphdef, params, counts = nnx.split(model, nnx.Param, Count)

    nnx.display(params, counts)
    assert sorted(params) == ["b", "w"] and list(counts) == ["count"]

    # merge multiple States
    model = nnx.merge(graphdef, params, counts)
    # update with multiple States
    nnx.update(model, params, counts)

    assert int(model.count.value) == 2
    np.testing.assert_allclose(model.w.value, w)
    np.testing.assert_allclose(model(jnp.ones((1, 3))), np.ones((1, 3)) @ w, rtol=1e-6)
    assert int(model.count.value) == 3


def test_seed001_filters_must_be_exhaustive():
    # "Note that filters must be exhaustive, if a value is not matched an error will be raised."
    model = StatefulLinear(din=3, dout=5, rngs=nnx.Rngs(0))
    try:
        nnx.split(model, nnx.Param)
    except ValueError as error:
        assert "count: Count" in str(error)
    else:
        raise AssertionError("split with non-exhaustive filters did not raise")


# -- seed 004: a simplified BatchNorm ---------------------------------------------------------


class BatchNorm(nnx.Module):
  def __init__(self, features: int, mu: float = 0.95):
    # Variables
    self.scale = nnx.Param(jax.numpy.ones((features,)))
    self.bias = nnx.Param(jax.numpy.zeros((features,)))
    self.mean = nnx.BatchStat(jax.numpy.zeros((features,)))
    self.var = nnx.BatchStat(jax.numpy.ones((features,)))
    self.mu = mu # Static
  def __call__(self, x):
    mean = jax.numpy.mean(x, axis=-1)
    var = jax.numpy.var(x, axis=-1)
    # ema updates
    self.mean.value = self.mu * self.mean + (1 - self.mu) * mean
    self.var.value = self.mu * self.var + (1 - self.mu) * var
    # normalize and scale
    x = (x - mean) / jax.numpy.sqrt(var + 1e-5)
    return x * self.scale + self.bias


def test_seed004_batchnorm_updates_mean_and_var_on_every_call():
    bn = BatchNorm(3)
    x = jnp.array([[1.0, 2.0, 6.0]])
    xn = np.asarray(x)
    m, v = xn.mean(-1), xn.var(-1)

    y = bn(x)
    np.testing.assert_allclose(y, (xn - m) / np.sqrt(v + 1e-5), rtol=1e-5)
    np.testing.assert_allclose(bn.mean.value, np.full(3, 0.05 * m[0]), rtol=1e-6)
    np.testing.assert_allclose(bn.var.value, np.full(3, 0.95 + 0.05 * v[0]), rtol=1e-6)

    bn(x)
    np.testing.assert_allclose(bn.mean.value, np.full(3, 0.95 * 0.05 * m[0] + 0.05 * m[0]), rtol=1e-6)

    # mu is static, the statistics are BatchStat state, the affine terms are Params
    assert "mu=0.95" in repr(nnx.graphdef(bn))
    assert sorted(nnx.state(bn, nnx.BatchStat)) == ["mean", "var"]
    assert sorted(nnx.state(bn, nnx.Param)) == ["bias", "scale"]
