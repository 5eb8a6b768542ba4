"""Property-based checks of the transforms against uncached references.

Hypothesis builds random module graphs (Modules, plain lists and dicts that become ``nnx.List``
/ ``nnx.Dict``, tuples of dicts, ``OrderedDict``s, dataclasses, shared Variables and submodules)
and random edits between calls (values, Variables replaced, attributes added or deleted,
container entries added or removed, sharing, static attributes). After every edit the result
of ``nnx.jit`` (called twice: the second call takes the cached path), ``nnx.grad``,
``nnx.vmap`` and ``nnx.scan`` and the state they leave behind must equal an eager run on a
clone of the model taken just before the call.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnx

_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@dataclasses.dataclass
class Box:
    """A user pytree (a registered dataclass) holding graph values."""

    items: list


jax.tree_util.register_dataclass(Box, data_fields=["items"], meta_fields=[])

_counter = itertools.count()


def _value(n: int) -> jax.Array:
    k = next(_counter) % 7
    return jnp.arange(n, dtype=jnp.float32) / 4.0 + k / 8.0


def _variable(kind: str, n: int) -> nnx.Variable:
    return (nnx.Param if kind == "param" else nnx.BatchStat)(_value(n))


class Node(nnx.Module):
    def __init__(self, attrs: dict):
        self.scale = 2
        for name, value in attrs.items():
            setattr(self, name, value)


# -- strategies ---------------------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c", "d"])
_attrs = st.sampled_from(["p", "q", "r", "s", "t"])
_leaves = st.one_of(
    st.builds(_variable, st.sampled_from(["param", "stat"]), st.integers(1, 3)),
    st.builds(lambda n: _value(n), st.integers(1, 2)),  # a raw array
)


def _tracked(children: st.SearchStrategy) -> st.SearchStrategy:
    """Containers whose every change bumps the structure version: the cached fast path."""
    return st.one_of(
        st.lists(children, max_size=3),  # becomes nnx.List on a Module
        st.dictionaries(_keys, children, max_size=3),  # becomes nnx.Dict
        st.tuples(children, children),  # immutable
        st.dictionaries(_attrs, children, max_size=3).map(Node),
    )


def _any_container(children: st.SearchStrategy) -> st.SearchStrategy:
    """Also containers the version does not see: calls flatten again every time."""
    return st.one_of(
        _tracked(children),
        st.tuples(st.dictionaries(_keys, children, max_size=2)),  # a dict in a tuple
        st.dictionaries(_keys, children, max_size=2).map(collections.OrderedDict),
        st.lists(children, max_size=2).map(Box),
    )


_variables = st.builds(_variable, st.sampled_from(["param", "stat"]), st.integers(1, 3))
tracked_models = st.dictionaries(
    _attrs, st.recursive(_variables, _tracked, max_leaves=8), min_size=1, max_size=4
).map(Node)
models = st.dictionaries(
    _attrs, st.recursive(_leaves, _any_container, max_leaves=8), min_size=1, max_size=4
).map(Node)
edits = st.lists(
    st.tuples(
        st.sampled_from(
            ["value", "replace", "add_attr", "del_attr", "add_entry", "del_entry", "share",
             "static"]
        ),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=4,
)


# -- walking and editing the live graph ----------------------------------------------------


def _slots(root: Node) -> tuple[list, list, list, list]:
    """Modules, mutable containers, (container, key) slots holding Variables, all Variables."""
    modules, containers, var_slots, variables = [], [], [], []
    seen: set[int] = set()

    def walk(value):
        if isinstance(value, nnx.Variable):
            if id(value) not in seen:
                seen.add(id(value))
                variables.append(value)
            return
        if isinstance(value, jax.Array) or id(value) in seen:
            return
        if isinstance(value, Node):
            seen.add(id(value))
            modules.append(value)
            for k, v in list(vars(value).items()):
                if isinstance(v, nnx.Variable):
                    var_slots.append((value, k))
                walk(v)
        elif isinstance(value, list | dict):
            seen.add(id(value))
            containers.append(value)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in list(items):
                if isinstance(v, nnx.Variable):
                    var_slots.append((value, k))
                walk(v)
        elif isinstance(value, tuple):
            for v in value:
                walk(v)
        elif isinstance(value, Box):
            walk(value.items)

    walk(root)
    return modules, containers, var_slots, variables


def _put(container, key, value):
    if isinstance(container, Node):
        setattr(container, key, value)
    else:
        container[key] = value


def _apply(root: Node, kind: str, n: int) -> None:
    modules, containers, var_slots, variables = _slots(root)
    if kind == "value" and variables:
        v = variables[n % len(variables)]
        v[...] = v[...] * 0.5 + 1.0
    elif kind == "replace" and var_slots:
        container, key = var_slots[n % len(var_slots)]
        _put(container, key, _variable("param" if n % 2 else "stat", 1 + n % 3))
    elif kind == "add_attr":
        module = modules[n % len(modules)]
        value = _variable("param", 2) if n % 3 else Node({"p": _variable("stat", 1)})
        setattr(module, f"new{n % 5}", value)
    elif kind == "del_attr":
        module = modules[n % len(modules)]
        names = [k for k in vars(module) if k != "scale"]
        if names:
            delattr(module, names[n % len(names)])
    elif kind == "add_entry" and containers:
        container = containers[n % len(containers)]
        value = _variable("param", 1 + n % 2)
        if isinstance(container, list):
            container.append(value)
        else:
            container[f"k{n % 6}"] = value
    elif kind == "del_entry" and containers:
        container = containers[n % len(containers)]
        if container:
            if isinstance(container, list):
                container.pop(n % len(container))
            else:
                del container[list(container)[n % len(container)]]
    elif kind == "share" and variables:
        module = modules[n % len(modules)]
        setattr(module, f"shared{n % 3}", variables[(n // 7) % len(variables)])
    elif kind == "static":
        modules[n % len(modules)].scale = 1 + n % 4


# -- the functions under test --------------------------------------------------------------


def _weight(path: tuple) -> float:
    return 1.0 + (sum(len(str(p)) for p in path) % 5) / 4.0


def read(m: Node, x):
    """A scalar that depends on every Param, raw array and static ``scale``."""
    total = jnp.zeros(())
    for path, value in nnx.iter_graph(m):
        if isinstance(value, nnx.Param) or isinstance(value, jax.Array):
            total = total + jnp.sum(jnp.asarray(value) * _weight(path)) * x
        elif isinstance(value, Node):
            total = total * value.scale / 2 + value.scale
    return total


def read_and_update(m: Node, x):
    """``read``, and every BatchStat moves towards ``x`` (state to write back)."""
    out = read(m, x)
    for _, value in nnx.iter_graph(m):
        if isinstance(value, nnx.BatchStat):
            value[...] = value[...] * 0.5 + x
    return out


def _assert_same_state(model: Node, reference: Node) -> None:
    got = nnx.state(model).flat_state()
    want = nnx.state(reference).flat_state()
    assert [p for p, _ in got] == [p for p, _ in want]
    for (path, a), (_, b) in zip(got, want, strict=True):
        assert type(a) is type(b), path
        np.testing.assert_allclose(jnp.asarray(a), jnp.asarray(b), rtol=1e-5, err_msg=str(path))


# -- properties ---------------------------------------------------------------------------


def _check_jit(model: Node, changes: list) -> None:
    f = nnx.jit(read_and_update)
    for step, (kind, n) in enumerate([("none", 0), *changes]):
        _apply(model, kind, n)
        for _ in range(2):  # the second call goes through the cached binding
            reference = nnx.clone(model)
            x = 0.25 * (step + 1)
            want = read_and_update(reference, x)
            got = f(model, x)
            np.testing.assert_allclose(got, want, rtol=1e-5)
            _assert_same_state(model, reference)


@settings(max_examples=150, **_SETTINGS)
@given(model=tracked_models, changes=edits)
def test_jit_equals_eager_after_random_edits_on_the_cached_path(model, changes):
    _check_jit(model, changes)


@settings(max_examples=100, **_SETTINGS)
@given(model=models, changes=edits)
def test_jit_equals_eager_after_random_edits_through_any_container(model, changes):
    _check_jit(model, changes)


@settings(max_examples=40, **_SETTINGS)
@given(model=models, changes=edits)
def test_grad_equals_split_merge_reference(model, changes):
    for kind, n in [("none", 0), *changes]:
        _apply(model, kind, n)
        reference = nnx.clone(model)
        grads = nnx.grad(lambda m: read(m, 0.5))(model)
        graphdef, params, rest = nnx.split(reference, nnx.Param, ...)
        want = jax.grad(lambda p, g=graphdef, r=rest: read(nnx.merge(g, p, r), 0.5))(params)
        _assert_same_state_of(grads, want)


def _assert_same_state_of(a: nnx.State, b: nnx.State) -> None:
    fa, fb = a.flat_state(), b.flat_state()
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        np.testing.assert_allclose(jnp.asarray(x), jnp.asarray(y), rtol=1e-5, err_msg=str(path))


@settings(max_examples=40, **_SETTINGS)
@given(model=models, changes=edits)
def test_vmap_equals_a_loop(model, changes):
    xs = jnp.array([0.5, 1.0, 2.0])
    mapped = nnx.vmap(read, in_axes=(None, 0))
    for kind, n in [("none", 0), *changes]:
        _apply(model, kind, n)
        reference = nnx.clone(model)
        want = jnp.stack([read(reference, x) for x in xs])
        np.testing.assert_allclose(mapped(model, xs), want, rtol=1e-5)
        _assert_same_state(model, reference)


@settings(max_examples=40, **_SETTINGS)
@given(model=models, changes=edits)
def test_scan_equals_a_loop(model, changes):
    xs = jnp.array([0.5, 1.0, 2.0])

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def body(m, x):
        return m, read_and_update(m, x)

    for kind, n in [("none", 0), *changes]:
        _apply(model, kind, n)
        reference = nnx.clone(model)
        want = jnp.stack([read_and_update(reference, x) for x in xs])
        _, got = body(model, xs)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        _assert_same_state(model, reference)
