"""Non-finite steps: skipped on the device, counted, and a streak stops training."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnx
from trainer import Trainer


class Net(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(params=0, dropout=1)
        self.l1 = nnx.Linear(3, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)


def _values(model):
    out = []
    for v in jax.tree.leaves(nnx.state(model)):
        out.append(np.asarray(jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v))
    return out


def test_a_non_finite_batch_is_skipped_and_leaves_no_trace():
    x, y = _data(16)
    bad = y.copy()
    bad[5] = np.nan  # batch 1 of 4
    skipped = Trainer(Net(), optax.adam(0.05), loss="mse")
    hist = skipped.fit(x, bad, batch_size=4, epochs=1, shuffle=False, verbose=0)
    # the same run without batch 1: parameters, BatchNorm statistics, Dropout's RNG counter and
    # Adam's state are as if the batch had never been there
    keep = np.r_[0:4, 8:16]
    clean = Trainer(Net(), optax.adam(0.05), loss="mse")
    clean_hist = clean.fit(x[keep], y[keep], batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(_values(skipped.model), _values(clean.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert hist.history["nonfinite_steps"] == [1.0] and hist.history["first_nonfinite_step"] == [1.0]
    assert skipped.step == 4 and skipped.stop_reason is None
    # the epoch's loss is the mean over the finite batches
    assert hist.history["loss"] == pytest.approx(clean_hist.history["loss"], rel=1e-6)
    assert np.isfinite(skipped.optimizer_state()[0][0].mu["l1"]["kernel"]).all()


def test_non_finite_gradients_with_a_finite_loss_are_skipped_too():
    x, y = _data(8)

    def loss(predictions, targets):  # finite value, NaN gradient (sqrt at 0)
        return jnp.mean((predictions - targets) ** 2, axis=-1) + jnp.sqrt(jnp.abs(predictions - predictions))[:, 0]

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    before = np.asarray(model.kernel.value).copy()
    hist = Trainer(model, optax.sgd(0.1), loss=loss).fit(x, y, batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(model.kernel.value), before)
    assert hist.history["nonfinite_steps"] == [2.0] and np.isfinite(hist.history["loss"][0])


def test_a_streak_of_non_finite_steps_stops_training(caplog):
    x, y = _data(64)
    bad = y.copy()
    bad[8:] = np.inf  # every batch from step 2 on
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    trainer = Trainer(model, optax.sgd(0.01), loss="mse", max_consecutive_nonfinite=3)
    with caplog.at_level(logging.ERROR, logger="trainer"):
        hist = trainer.fit(x, bad, batch_size=4, epochs=5, shuffle=False, verbose=0)
    assert trainer.stop_reason == "nonfinite" and trainer.stop_training
    assert trainer.step < 5 * 16 and len(hist.history["loss"]) <= 1
    assert "3 steps in a row" in caplog.text or "in a row" in caplog.text
    assert np.isfinite(np.asarray(model.kernel.value)).all()


def test_no_limit_keeps_going_and_bad_arguments_are_refused():
    x, y = _data(16)
    bad = np.full_like(y, np.nan)
    trainer = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.01), loss="mse", max_consecutive_nonfinite=None)
    trainer.fit(x, bad, batch_size=4, epochs=2, verbose=0)
    assert trainer.step == 8 and trainer.stop_reason is None
    with pytest.raises(ValueError, match="max_consecutive_nonfinite must be None or an int >= 1"):
        Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.01), max_consecutive_nonfinite=0)


def test_skipping_works_with_low_precision_parameters_and_injected_hyperparameters():
    x, y = _data(8)
    bad = y.copy()
    bad[0] = np.nan
    # (inject_hyperparams casts Adam's b2 to bfloat16, where 0.999 rounds to 1: not for bf16)
    for dtype, tx in ((jnp.bfloat16, optax.adam(0.1)), (jnp.float32, optax.inject_hyperparams(optax.adam)(learning_rate=0.1))):
        model = nnx.Linear(3, 1, param_dtype=dtype, rngs=nnx.Rngs(0))
        hist = Trainer(model, tx, loss="mse").fit(x, bad, batch_size=4, epochs=1, shuffle=False, verbose=0)
        assert hist.history["nonfinite_steps"] == [1.0] and model.kernel.value.dtype == dtype
        assert np.isfinite(np.asarray(model.kernel.value, np.float32)).all()


def test_all_finite_sees_any_nan_or_infinity():
    from trainer.steps import all_finite

    ok = {"a": jnp.ones((3, 2)), "b": jnp.arange(4.0), "n": jnp.arange(3)}
    assert bool(all_finite(ok))
    for bad in (np.nan, np.inf, -np.inf):
        tree = {**ok, "b": ok["b"].at[2].set(bad)}
        assert not bool(all_finite(tree))
    # opposite infinities in two leaves do not cancel out
    assert not bool(all_finite({"a": jnp.array([np.inf]), "b": jnp.array([-np.inf])}))
    assert not bool(all_finite({"h": jnp.array([np.inf], jnp.bfloat16)}))
    # values near float32's largest are finite: the check does not sum them
    assert bool(all_finite({"a": jnp.full((4,), 3e38), "b": jnp.full((2, 2), -3e38)}))


def test_all_finite_checks_large_complex_and_lone_leaves():
    from trainer.steps import SMALL_LEAF, all_finite

    big = jnp.ones((SMALL_LEAF + 1,))
    small = {"w": jnp.ones((3, 3)), "b": jnp.zeros((3,), jnp.bfloat16), "e": jnp.ones((0,))}
    assert bool(all_finite({"big": big, **small}))
    for tree in (
        {"big": big.at[-1].set(np.nan), **small},
        {"big": big, **small, "b": small["b"].at[1].set(-np.inf)},
        {"only": jnp.array([1.0, np.inf])},
        {"z": jnp.array([1 + 1j, complex(0, np.nan)], jnp.complex64), **small},
    ):
        assert not bool(all_finite(tree))
    assert bool(all_finite({"z": jnp.array([1 + 1j], jnp.complex64), "n": jnp.arange(3)}))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from([1, 3, 17, 300]), min_size=1, max_size=6),
    dtypes=st.lists(st.sampled_from([np.float32, jnp.bfloat16, np.float16]), min_size=6, max_size=6),
    bad=st.none() | st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.sampled_from([np.nan, np.inf, -np.inf])),
)
def test_all_finite_matches_numpy_on_random_trees(sizes, dtypes, bad):
    from trainer import steps

    leaves = [np.linspace(-5e3, 5e3, n).astype(dtypes[i]) for i, n in enumerate(sizes)]
    if bad is not None:
        leaf, at, value = bad
        leaves[leaf % len(leaves)][at % leaves[leaf % len(leaves)].size] = value
    want = all(np.isfinite(x.astype(np.float32)).all() for x in leaves)
    # a small SMALL_LEAF puts the larger leaves on the per-leaf path, the rest in one vector
    original, steps.SMALL_LEAF = steps.SMALL_LEAF, 100
    try:
        got = bool(steps.all_finite([jnp.asarray(x) for x in leaves]))
    finally:
        steps.SMALL_LEAF = original
    assert got == want
