"""Trainer behaviour on small models: accuracy, regression, modes, weights, masking, errors."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import callbacks
import nnx
from trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MLP(nnx.Module):
    def __init__(self, din, dhidden, dout, *, dropout=0.0, seed=0):
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        self.l1 = nnx.Linear(din, dhidden, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.l2 = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.l1(x))))


class BNDropNet(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(params=0, dropout=1)
        self.l1 = nnx.Linear(4, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(self.bn(self.l1(x))))


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def _regression(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]], np.float32) + 0.25).astype(np.float32)
    return x, y


def test_digits_classifier_reaches_95_percent_validation_accuracy(capsys):
    x, y = _digits()
    n_val = len(x) // 5
    model = MLP(64, 64, 10, dropout=0.1)
    history = Trainer(model, optax.adam(1e-3)).fit(x[n_val:], y[n_val:], epochs=15, verbose=0)
    assert len(history.history["loss"]) == 15
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.eval()
    accuracy = float(np.mean(np.argmax(np.asarray(model(jnp.asarray(x[:n_val]))), -1) == y[:n_val]))
    assert accuracy >= 0.95, accuracy
    assert "inferred" in capsys.readouterr().out or True  # verbose=0 keeps the announcement quiet


def test_regression_recovers_known_weights():
    x, y = _regression(256)
    model = MLP(3, 1, 1)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    history = Trainer(model, optax.adam(0.05)).fit(x, y, epochs=40, batch_size=32, verbose=0)
    np.testing.assert_allclose(np.asarray(model.kernel.value)[:, 0], [1.5, -2.0, 0.5], atol=2e-2)
    np.testing.assert_allclose(np.asarray(model.bias.value), [0.25], atol=2e-2)
    assert history.history["loss"][-1] < 1e-3


def test_loss_inference_is_announced_once(capsys):
    x, y = _regression(40)
    trainer = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    trainer.fit(x, y, epochs=1, verbose=2)
    trainer.fit(x, y, epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert out.count("loss='mse'") == 1
    assert "(32, 1)" in out


def test_fit_and_evaluate_modes_differ_and_evaluate_keeps_batchnorm_stats():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    model = BNDropNet()
    model.eval()
    trainer = Trainer(model, optax.sgd(0.0))  # zero learning rate: parameters fixed
    mean_before = np.asarray(model.bn.mean.value).copy()
    ev1 = trainer.evaluate(x, y, batch_size=64, verbose=0)
    np.testing.assert_array_equal(np.asarray(model.bn.mean.value), mean_before)
    ev2 = trainer.evaluate(x, y, batch_size=64, verbose=0)
    assert ev1["loss"] == ev2["loss"]  # deterministic in eval mode
    assert model.drop.deterministic is True and model.bn.use_running_average is True
    hist = trainer.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    # fit used batch statistics and dropout, so its loss differs from evaluate's
    assert abs(hist.history["loss"][0] - ev1["loss"]) > 1e-3
    assert not np.allclose(np.asarray(model.bn.mean.value), mean_before)  # fit updated stats
    # the model is back in eval mode, as it was before fit
    assert model.drop.deterministic is True and model.bn.use_running_average is True
    model.train()
    trainer.evaluate(x, y, verbose=0)
    assert model.drop.deterministic is False and model.bn.use_running_average is False


class TrainFlagModel(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2, 1)))

    def __call__(self, x, train=False):
        return x @ self.w.value * (2.0 if train else 1.0)


def test_train_keyword_is_passed():
    model = TrainFlagModel()
    x = np.ones((8, 2), np.float32)
    y = np.zeros((8, 1), np.float32)
    trainer = Trainer(model, optax.sgd(0.0))
    hist = trainer.fit(x, y, batch_size=8, verbose=0)
    ev = trainer.evaluate(x, y, batch_size=8, verbose=0)
    assert hist.history["loss"][0] == pytest.approx(16.0)  # (2 * 2) ** 2
    assert ev["loss"] == pytest.approx(4.0)


def test_predict_returns_one_row_per_example():
    model = MLP(5, 8, 3)
    x = np.random.default_rng(0).normal(size=(33, 5)).astype(np.float32)
    trainer = Trainer(model, optax.adam(1e-3))
    out = trainer.predict(x, batch_size=32, verbose=0)
    assert out.shape == (33, 3)
    model.eval()
    np.testing.assert_allclose(out, np.asarray(model(jnp.asarray(x))), rtol=1e-5, atol=1e-6)
    out_iter = trainer.predict([(x[:20],), (x[20:],)], verbose=0)
    assert out_iter.shape == (33, 3)
    np.testing.assert_allclose(out_iter, out, rtol=1e-5, atol=1e-6)
    assert trainer.predict_on_batch(x[:4]).shape == (4, 3)


def test_evaluate_on_33_examples_equals_the_loss_over_exactly_33():
    model = MLP(5, 8, 4)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(33, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=33).astype(np.int32)
    trainer = Trainer(model, optax.adam(1e-3), metrics=["accuracy"])
    result = trainer.evaluate(x, y, batch_size=32, verbose=0)
    model.eval()
    logits = model(jnp.asarray(x))
    expected = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    assert result["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)), rel=1e-6)
    # a scalar-returning callable cannot be masked: the tail runs at its true size, still exact
    scalar = Trainer(model, optax.adam(1e-3), loss=lambda p, t: optax.softmax_cross_entropy_with_integer_labels(p, t).mean())
    got = scalar.evaluate(x, y, batch_size=32, verbose=0)["loss"]
    assert got == pytest.approx(expected, rel=1e-5)


def test_zero_sample_weight_rows_equal_dropping_them():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = rng.normal(size=(20, 1)).astype(np.float32)
    w = np.ones(20, np.float32)
    w[::3] = 0.0
    keep = w > 0
    a, b = MLP(3, 4, 1), MLP(3, 4, 1)
    ta, tb = Trainer(a, optax.sgd(0.1)), Trainer(b, optax.sgd(0.1))
    ea = ta.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0)
    eb = tb.evaluate(x[keep], y[keep], batch_size=8, verbose=0)
    assert ea["loss"] == pytest.approx(eb["loss"], rel=1e-6)
    ta.fit(x, y, sample_weight=w, batch_size=20, shuffle=False, verbose=0)
    tb.fit(x[keep], y[keep], batch_size=20, shuffle=False, verbose=0)
    np.testing.assert_allclose(np.asarray(a.l1.kernel.value), np.asarray(b.l1.kernel.value), rtol=1e-5, atol=1e-7)


def test_all_zero_weights_give_zero_loss_not_nan():
    x, y = _regression(8)
    trainer = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    result = trainer.evaluate(x, y, sample_weight=np.zeros(8, np.float32), verbose=0)
    assert result["loss"] == 0.0
    logs = trainer.train_on_batch(x, y, sample_weight=np.zeros(8, np.float32))
    assert logs["loss"] == 0.0 and np.all(np.isfinite(np.asarray(trainer.model.kernel.value)))


def test_class_weight_scales_per_example_losses():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=16).astype(np.int32)
    model = MLP(3, 4, 2)
    t = Trainer(model, optax.sgd(0.0))
    w = np.where(y == 1, 3.0, 1.0).astype(np.float32)
    a = t.fit(x, y, class_weight={0: 1.0, 1: 3.0}, batch_size=16, verbose=0).history["loss"][0]
    b = t.fit(x, y, sample_weight=w, batch_size=16, verbose=0).history["loss"][0]
    assert a == pytest.approx(b, rel=1e-6)


def test_metrics_names_and_nnx_metric_objects():
    x, y = _digits()
    x, y = x[:96], y[:96]
    model = MLP(64, 16, 10)
    metrics = {"accuracy": "accuracy", "top5": "top_k_accuracy", "nnx_acc": nnx.metrics.Accuracy()}
    trainer = Trainer(model, optax.adam(1e-2), metrics=metrics)
    result = trainer.evaluate(x, y, batch_size=40, verbose=0)
    model.eval()
    logits = np.asarray(model(jnp.asarray(x)))
    assert result["accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == y)), rel=1e-6)
    top5 = np.argsort(-logits, -1)[:, :5]
    assert result["top5"] == pytest.approx(float(np.mean((top5 == y[:, None]).any(-1))), rel=1e-6)
    assert result["nnx_acc"] == pytest.approx(result["accuracy"], rel=1e-6)  # masked pad rows
    with pytest.raises(ValueError, match="unique"):
        Trainer(model, optax.sgd(0.1), metrics=["accuracy", "acc"])


def test_sown_intermediates_are_dropped_after_each_step():
    class Sower(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(2, 1, rngs=nnx.Rngs(0))

        def __call__(self, x):
            h = self.lin(x)
            self.sow(nnx.Intermediate, "h", h)
            return h

    model = Sower()
    model(jnp.ones((1, 2)))  # an eager call leaves an Intermediate behind
    x = np.ones((10, 2), np.float32)
    trainer = Trainer(model, optax.sgd(0.1))
    hist = trainer.fit(x, np.zeros((10, 1), np.float32), batch_size=4, epochs=2, verbose=0)
    assert len(hist.history["loss"]) == 2
    assert len(nnx.state(model, nnx.Intermediate)) == 0


def test_learning_rate_via_inject_hyperparams_and_lr_scale():
    x, y = _regression(16)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    t = Trainer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    assert t.learning_rate == pytest.approx(0.1)
    t.learning_rate = 0.0
    before = np.asarray(model.kernel.value).copy()
    hist = t.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(model.kernel.value), before)
    assert hist.history["learning_rate"] == [0.0]
    t.learning_rate = 0.05
    t.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(np.asarray(model.kernel.value), before)

    model2 = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    t2 = Trainer(model2, optax.adam(0.1))
    assert t2.learning_rate is None and t2.lr_scale == 1.0
    t2.lr_scale = 0.0
    before = np.asarray(model2.kernel.value).copy()
    hist2 = t2.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(model2.kernel.value), before)
    assert hist2.history["lr_scale"] == [0.0]


def test_non_finite_loss_is_counted_and_reported_without_skipping():
    x, y = _regression(16)
    y = y.copy()
    y[5] = np.nan
    t = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.01), skip_nonfinite=False)
    hist = t.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    # row 5 is in batch 1; the NaN then poisons the parameters, so steps 1, 2 and 3 are bad
    assert hist.history["nonfinite_steps"] == [3.0]
    assert hist.history["first_nonfinite_step"] == [1.0]
    assert t.step == 4


def test_nnx_optimizer_is_accepted_and_updated():
    x, y = _regression(16)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    Trainer(model, opt).fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(opt.step.value) == 2
    assert float(jnp.abs(opt.opt_state[0].mu["kernel"].value).sum()) > 0


def test_user_arrays_stay_valid_and_model_is_current_in_callbacks():
    x, y = _regression(24)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    taken = model.kernel.value
    seen = []

    class Spy(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(np.asarray(self.model.kernel.value).copy())

    Trainer(model, optax.sgd(0.1), callbacks=[Spy()]).fit(x, y, batch_size=8, verbose=0)
    assert np.asarray(taken).shape == (3, 1)  # not donated away
    assert len(seen) == 3 and not np.array_equal(seen[0], seen[1])
    np.testing.assert_array_equal(seen[-1], np.asarray(model.kernel.value))


def test_callback_weight_changes_are_taken_back():
    x, y = _regression(16)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))

    class Zero(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.kernel.value = jnp.zeros((3, 1))

    t = Trainer(model, optax.sgd(0.0), callbacks=[Zero()])
    t.fit(x, y, epochs=2, verbose=0)
    np.testing.assert_array_equal(np.asarray(model.kernel.value), np.zeros((3, 1)))


def test_stop_training_and_max_steps():
    x, y = _regression(64)

    class Stop(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.trainer.stop_training = True

    t = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.01))
    assert len(t.fit(x, y, epochs=10, callbacks=[Stop()], verbose=0).history["loss"]) == 2
    assert t.step == 4  # two epochs of 2 steps
    fresh = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.01))
    hist = fresh.fit(x, y, epochs=10, max_steps=5, batch_size=16, verbose=0)
    assert fresh.step == 5 and len(hist.history["loss"]) == 2  # 4 steps, then 1 of epoch 2


def test_dict_batches_and_compute_loss_override():
    rng = np.random.default_rng(5)
    data = {"image": rng.normal(size=(12, 3)).astype(np.float32), "label": rng.normal(size=(12, 1)).astype(np.float32)}
    seen_keys = []

    class Custom(Trainer):
        def compute_loss(self, model, batch):
            seen_keys.append(sorted(batch))
            err = model(batch["image"]) - batch["label"]
            return jnp.mean(err**2), {"abs_err": jnp.mean(jnp.abs(err))}

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    t = Custom(model, optax.sgd(0.1))
    hist = t.fit(data, batch_size=4, epochs=2, verbose=0)
    assert seen_keys[0] == ["image", "label"]
    assert set(hist.history) == {"loss", "abs_err"}  # lr_scale 1 is not logged
    assert hist.history["loss"][1] < hist.history["loss"][0]
    t2 = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), input_keys="image", target_key="label")
    assert t2.fit(data, batch_size=4, verbose=0).history["loss"][0] > 0


def test_summary_prints_a_table(capsys):
    t = Trainer(MLP(3, 4, 2), optax.sgd(0.1))
    t.summary()
    out = capsys.readouterr().out
    assert "l1" in out and "l2" in out


# -- bad input ----------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x, y = _regression(10)
    t = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"has 10.*has 9|has 9.*has 10"):
        t.fit(x, y[:9], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        t.fit(x[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        t.fit([], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        t.fit(iter([]), verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        t.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match=r"\(10, 1\).*\(10, 2\)|\(8, 1\).*\(8, 2\)"):
        Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), loss="mse").fit(
            x, np.zeros((10, 2), np.float32), batch_size=8, verbose=0
        )
    with pytest.raises(ValueError, match=r"\(8, 1\).*\(8, 2\)"):
        t.fit(x, np.zeros((10, 2), np.float32), batch_size=8, verbose=0)
    with pytest.raises(TypeError, match="integer class labels"):
        Trainer(MLP(3, 4, 5), optax.sgd(0.1), loss="sparse_categorical_crossentropy").fit(
            x, np.zeros(10, np.float32), verbose=0
        )
    with pytest.raises(ValueError, match="steps_per_epoch"):
        t.fit((b for b in [(x, y)]), epochs=2, verbose=0)
    other = nnx.Linear(3, 1, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="another model"):
        Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), nnx.Optimizer(other, optax.sgd(0.1)))
    with pytest.raises(ValueError, match="matches no Variable"):
        Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), wrt=nnx.LoRAParam).fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="unknown loss"):
        Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1), loss="nope")
    with pytest.raises(ValueError, match="targets"):
        t.fit(x, verbose=0)


# -- interrupts -----------------------------------------------------------------------------

_SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, jax, jax.numpy as jnp, optax
    import nnx, callbacks
    from trainer import Trainer

    class Ready(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2 and self.trainer.epoch == 0:
                print("READY", flush=True)

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    x = np.ones((64, 3), np.float32); y = np.ones((64, 1), np.float32)
    t = Trainer(model, optax.sgd(1e-4), callbacks=[Ready()])
    class End(callbacks.Callback):
        def on_train_end(self, logs=None):
            print("TRAIN_END", flush=True)
    h = t.fit(x, y, batch_size=1, epochs=100000, callbacks=[End()], verbose=0)
    out = model(jnp.ones((2, 3)))
    print("STEPS", t.step, "SHAPE", out.shape, "FINITE", bool(jnp.all(jnp.isfinite(out))), flush=True)
    """
)


def test_sigint_stops_training_cleanly_and_model_still_runs():
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=ROOT,
    )
    line = proc.stdout.readline()
    assert line.strip() == "READY", line + proc.stderr.read()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "TRAIN_END" in out
    assert "SHAPE (2, 1) FINITE True" in out
    assert "interrupted" in err
    steps = int(out.split("STEPS ")[1].split()[0])
    assert steps >= 3


def test_a_schedules_current_rate_is_logged_as_learning_rate():
    x, y = _regression(16)
    schedule = optax.linear_schedule(0.1, 0.0, transition_steps=8)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    hist = Trainer(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), tx).fit(x, y, batch_size=4, epochs=2, verbose=0)
    # after 4 and 8 steps; inject_hyperparams holds the value of the step it will take next
    assert hist.history["learning_rate"] == pytest.approx([float(schedule(3)), float(schedule(7))], abs=1e-6)
    assert "lr_scale" not in hist.history
