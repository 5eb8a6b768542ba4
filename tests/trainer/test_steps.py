"""Compiled steps: steps_per_execution logs, compile counts, checkpoint state and exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import callbacks
import nnx
from trainer import Trainer


class Net(nnx.Module):
    def __init__(self, seed=0):
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.l1(x))))


def _data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=n).astype(np.int32)
    return x, y


class Recorder(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []
        self.begins = []

    def on_train_batch_begin(self, batch, logs=None):
        self.begins.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((batch, dict(logs)))


def _leaves(model):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param).to_pure_dict())]


def test_steps_per_execution_1_and_8_give_the_same_batch_logs():
    x, y = _data(100)  # 13 batches of 8 (the last has 4): not a multiple of 8
    runs = []
    for spe in (1, 8):
        model = Net()
        rec = Recorder()
        t = Trainer(model, optax.adam(1e-2), metrics=["accuracy"], steps_per_execution=spe)
        t.fit(x, y, batch_size=8, epochs=2, callbacks=[rec], verbose=0)
        runs.append((rec, _leaves(model), t.step))
    (r1, p1, s1), (r8, p8, s8) = runs
    assert s1 == s8 == 26
    assert [b for b, _ in r1.batches] == [b for b, _ in r8.batches] == list(range(13)) * 2
    assert r1.begins == r8.begins
    for (_, a), (_, b) in zip(r1.batches, r8.batches, strict=True):
        assert a.keys() == b.keys() == {"loss", "accuracy"}
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7)
    for a, b in zip(p1, p8, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class Counting(Trainer):
    train_traces = 0
    eval_traces = 0

    def train_step(self, state, batch):
        Counting.train_traces += 1
        return super().train_step(state, batch)

    def eval_step(self, state, batch):
        Counting.eval_traces += 1
        return super().eval_step(state, batch)


def test_train_and_eval_steps_compile_once_per_input_shape():
    Counting.train_traces = Counting.eval_traces = 0
    x, y = _data(100)
    t = Counting(Net(), optax.adam(1e-3))
    t.fit(x, y, batch_size=32, epochs=3, validation_data=(x[:50], y[:50]), verbose=0)
    assert Counting.train_traces == 2  # 32 rows, and the 4-row last batch
    assert Counting.eval_traces == 1  # the 18-row tail is padded and masked
    t.fit(x, y, batch_size=32, epochs=1, verbose=0)
    t.evaluate(x[:50], y[:50], batch_size=32, verbose=0)
    assert (Counting.train_traces, Counting.eval_traces) == (2, 1)
    # array data is gathered on the device, so another dataset size is another input shape
    t.evaluate(x, y, batch_size=32, verbose=0)
    assert Counting.eval_traces == 2
    t.fit(x, y, batch_size=32, epochs=1, drop_remainder=True, verbose=0)
    assert Counting.train_traces == 2
    t.fit(x, y, batch_size=20, epochs=1, verbose=0)  # a new shape compiles once more
    assert Counting.train_traces == 3
    # iterables: one compile per distinct batch shape
    t.fit([(x[:20], y[:20]), (x[20:40], y[20:40]), (x[40:50], y[40:50])], epochs=2, verbose=0)
    assert Counting.train_traces == 5


def test_donated_buffers_are_not_the_users_and_donate_false_works():
    x, y = _data(40)
    model = Net()
    k0 = model.l1.kernel.value
    Trainer(model, optax.adam(1e-2), donate=False).fit(x, y, batch_size=8, verbose=0)
    assert not k0.is_deleted()
    k1 = model.l1.kernel.value
    Trainer(model, optax.adam(1e-2)).fit(x, y, batch_size=8, verbose=0)
    assert not k1.is_deleted() and not np.array_equal(np.asarray(k1), np.asarray(model.l1.kernel.value))


def test_checkpoint_state_is_a_pytree_of_arrays_and_scalars():
    x, y = _data(40)
    t = Trainer(Net(), optax.adam(1e-2))
    t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    tree = t.checkpoint_state()
    assert set(tree) >= {"model", "optimizer", "step", "epoch", "batch", "rng"}
    assert tree["step"] == 5 and tree["epoch"] == 1 and tree["batch"] == 0
    for leaf in jax.tree.leaves(tree):
        assert isinstance(leaf, int | float | np.ndarray | jax.Array)
    np.testing.assert_array_equal(tree["model"]["l1"]["kernel"], np.asarray(t.model.l1.kernel.value))


def test_resume_from_checkpoint_state_in_on_train_begin_is_exact():
    x, y = _data(60)
    straight = Net()
    Trainer(straight, optax.adam(1e-2), seed=3).fit(x, y, batch_size=8, epochs=3, verbose=0)

    class SaveAt(callbacks.Callback):
        def __init__(self, step):
            super().__init__()
            self.step, self.saved = step, None

        def on_train_batch_end(self, batch, logs=None):
            if self.trainer.step == self.step:
                self.saved = jax.tree.map(np.asarray, self.trainer.checkpoint_state())
                self.trainer.stop_training = True

    first = Net()
    saver = SaveAt(11)  # mid epoch 1 (8 batches per epoch)
    Trainer(first, optax.adam(1e-2), seed=3).fit(x, y, batch_size=8, epochs=3, callbacks=[saver], verbose=0)
    assert saver.saved["epoch"] == 1 and saver.saved["batch"] == 3

    class Restore(callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.trainer.load_checkpoint_state(saver.saved)

    resumed = Net(seed=7)  # different initial weights: all must come from the checkpoint
    t = Trainer(resumed, optax.adam(1e-2), seed=3)
    hist = t.fit(x, y, batch_size=8, epochs=3, callbacks=[Restore()], verbose=0)
    assert t.step == 24 and hist.epoch == [0, 1, 2]  # the History of epoch 0 came with the state
    for a, b in zip(_leaves(straight), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_shuffle_order_depends_only_on_seed_and_epoch():
    x, y = _data(30)
    finals = []
    for _ in range(2):
        model = Net()
        Trainer(model, optax.sgd(0.1), seed=5).fit(x, y, batch_size=8, epochs=2, verbose=0)
        finals.append(_leaves(model))
    other = Net()
    Trainer(other, optax.sgd(0.1), seed=6).fit(x, y, batch_size=8, epochs=2, verbose=0)
    for a, b in zip(*finals, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(finals[0], _leaves(other), strict=True))


def test_train_on_batch_and_test_on_batch():
    x, y = _data(16)
    model = Net()
    t = Trainer(model, optax.sgd(0.1), metrics=["accuracy"])
    before = np.asarray(model.l2.kernel.value).copy()
    logs = t.train_on_batch(x, y)
    assert set(logs) == {"loss", "accuracy"} and t.step == 1
    assert not np.array_equal(before, np.asarray(model.l2.kernel.value))
    ev = t.test_on_batch(x, y)
    model.eval()
    expected = float(optax.softmax_cross_entropy_with_integer_labels(model(jnp.asarray(x)), y).mean())
    assert ev["loss"] == pytest.approx(expected, rel=1e-6)


class EvalRecorder(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_test_batch_begin(self, batch, logs=None):
        self.events.append(("begin", batch))

    def on_test_batch_end(self, batch, logs=None):
        self.events.append(("end", batch, dict(logs)))

    def on_predict_batch_end(self, batch, logs=None):
        self.events.append(("predict", batch, np.asarray(logs["outputs"]).shape))


def _assert_same_events(a, b):
    assert [e[:2] for e in a] == [e[:2] for e in b]
    for ea, eb in zip(a, b, strict=True):
        if ea[0] == "end":
            assert ea[2].keys() == eb[2].keys()
            for k in ea[2]:
                assert ea[2][k] == pytest.approx(eb[2][k], rel=1e-6, abs=1e-7)
        elif ea[0] == "predict":
            assert ea[2] == eb[2]


def test_evaluate_with_steps_per_execution_equals_single_steps():
    x, y = _data(35)  # batch 4: 8 full batches and a padded one; blocks of 3 leave 3 single steps
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 35, 4)]
    scalar_loss = lambda p, t: optax.softmax_cross_entropy_with_integer_labels(p, t).mean()  # noqa: E731
    results = {}
    for spe in (1, 3):
        model = Net()
        metrics = {"accuracy": "accuracy", "nnx_acc": nnx.metrics.Accuracy()}
        t = Trainer(model, optax.sgd(0.1), metrics=metrics, steps_per_execution=spe)
        rec = EvalRecorder()
        results[spe] = [
            t.evaluate(x, y, batch_size=4, callbacks=[rec], verbose=0),
            t.evaluate(batches, verbose=0),  # an iterable: stacked blocks, a smaller last batch
            t.evaluate(x, y, batch_size=4, steps=7, verbose=0),
            # a scalar loss cannot be masked: full batches fused, the last at its true size
            Trainer(model, optax.sgd(0.1), loss=scalar_loss, steps_per_execution=spe).evaluate(x, y, batch_size=4, verbose=0),
            rec.events,
        ]
    *one, events1 = results[1]
    *fused, events3 = results[3]
    assert len(events1) == 2 * 9
    _assert_same_events(events1, events3)
    for a, b in zip(one, fused, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7)
    model = Net()
    model.eval()
    expected = float(optax.softmax_cross_entropy_with_integer_labels(model(jnp.asarray(x)), y).mean())
    assert fused[0]["loss"] == pytest.approx(expected, rel=1e-6)


def test_predict_with_steps_per_execution_equals_single_steps():
    x, _ = _data(35)
    batches = [(x[i : i + 4],) for i in range(0, 35, 4)]
    outs = {}
    for spe in (1, 3):
        rec = EvalRecorder()
        t = Trainer(Net(), optax.sgd(0.1), steps_per_execution=spe)
        outs[spe] = (t.predict(x, batch_size=4, callbacks=[rec], verbose=0), t.predict(batches, verbose=0), rec.events)
    for a, b in zip(outs[1][:2], outs[3][:2], strict=True):
        assert a.shape == b.shape == (35, 3)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    _assert_same_events(outs[1][2], outs[3][2])
    assert [e[1] for e in outs[3][2]] == list(range(9))


def test_a_plain_array_attribute_replaced_by_a_train_step_is_a_clear_error():
    class Counting(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
            self.scale = jnp.array(2.0)  # a constant plain array: fine
            self.calls = jnp.array(0)

        def __call__(self, x):
            self.calls = self.calls + 1  # would be lost: not a Variable
            return self.linear(x) * self.scale

    x = np.ones((8, 3), np.float32)
    y = np.ones((8, 1), np.float32)
    with pytest.raises(ValueError, match=r"plain array attribute 'calls' was replaced(.|\n)*nnx.BatchStat"):
        Trainer(Counting(), optax.sgd(0.1), loss="mse").fit(x, y, batch_size=4, verbose=0)

    class Constant(Counting):
        def __call__(self, x):
            return self.linear(x) * self.scale

    model = Constant()
    Trainer(model, optax.sgd(0.1), loss="mse").fit(x, y, batch_size=4, verbose=0)
    assert float(model.scale) == 2.0


def test_a_variable_created_by_a_train_step_is_a_clear_error_and_calling_first_is_the_fix():
    class Lazy(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(3, 1, rngs=nnx.Rngs(0))

        def __call__(self, x):
            if not hasattr(self, "seen"):
                self.seen = nnx.BatchStat(jnp.zeros(()))
            self.seen[...] += x.shape[0]
            self.sow(nnx.Intermediate, "hidden", x)  # sown values are dropped, as always
            return self.linear(x)

    x = np.ones((8, 3), np.float32)
    y = np.ones((8, 1), np.float32)
    with pytest.raises(ValueError, match="created BatchStat 'seen' during a train step"):
        Trainer(Lazy(), optax.sgd(0.1), loss="mse").fit(x, y, batch_size=4, verbose=0)
    model = Lazy()
    model(x[:1])  # the Variable exists before fit
    Trainer(model, optax.sgd(0.1), loss="mse").fit(x, y, batch_size=4, verbose=0)
    assert float(model.seen[...]) == 1 + 8
