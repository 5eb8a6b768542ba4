"""steps_per_execution="auto": the fused loop gives the logs and parameters of single steps."""

import jax
import numpy as np
import optax
import pytest

import callbacks
import nnx
from trainer import Trainer
from trainer.data import ArrayData
from trainer.loop import FusionTuner
from trainer.plan import BatchPlan


class Net(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(params=0, dropout=1)
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))


class StepLogs(callbacks.Callback):
    """Takes each step's logs; fine to run after a fused block."""

    fusable_batch_hooks = True

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append((batch, logs))


class ReadsModel(callbacks.Callback):
    """A batch hook that needs the model at every step."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(np.asarray(self.model.l1.kernel.value))


def _fit(spe, *extra, epochs=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * 24, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=8 * 24).astype(np.int32)
    record = StepLogs()
    trainer = Trainer(Net(), optax.adam(1e-2), metrics=("accuracy",), steps_per_execution=spe)
    history = trainer.fit(
        x, y, batch_size=8, epochs=epochs, validation_data=(x[:40], y[:40]), verbose=0,
        callbacks=[record, *extra],
    )
    return trainer, history, record


def _values(model):
    """The model's arrays (RNG keys as their key data)."""
    out = []
    for v in jax.tree.leaves(nnx.state(model)):
        out.append(np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v))
    return out


def test_auto_fuses_steps_and_matches_single_steps_bit_for_bit():
    single, h1, r1 = _fit(1)
    auto, ha, ra = _fit("auto")
    chosen = auto._runtime.tuner.chosen
    train_choices = [k for key, k in chosen.items() if key[0] == "train"]
    assert train_choices and train_choices[0] > 1  # 24 steps per epoch: fused after probing
    assert h1.history == ha.history  # epoch logs, validation included, exactly equal
    assert [b for b, _ in r1.logs] == [b for b, _ in ra.logs] == list(range(24)) * 3
    assert [logs for _, logs in r1.logs] == [logs for _, logs in ra.logs]
    for a, b in zip(_values(single.model), _values(auto.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_auto_keeps_single_steps_while_a_batch_hook_reads_the_model():
    reader = ReadsModel()
    trainer, _, _ = _fit("auto", reader, epochs=1)
    assert not [k for key, k in trainer._runtime.tuner.chosen.items() if key[0] == "train"]
    assert len(reader.kernels) == 24
    assert not all(np.array_equal(reader.kernels[0], k) for k in reader.kernels[1:])


def _plan(n, bs, kind="train"):
    return BatchPlan(ArrayData(None, n), kind, bs)


def test_fusion_tuner_picks_a_block_that_tiles_the_pass():
    tuner = FusionTuner(target_seconds=0.1, cap=256)
    assert tuner.choose(1e-4, _plan(256 * 8, 8)) == 256  # 1000 steps fit in 0.1 s: the cap
    assert tuner.choose(1e-4, _plan(250 * 8, 8)) == 250  # one block per epoch
    assert tuner.choose(1e-4, _plan(257 * 8, 8)) == 256  # one single step left over
    assert tuner.choose(1e-4, _plan(600 * 8, 8)) == 200  # 256 would leave 88 single steps
    assert tuner.choose(1e-4, _plan(600 * 8 + 3, 8)) == 200  # the partial batch runs alone
    assert tuner.choose(0.02, _plan(256 * 8, 8)) == 5  # 5 steps per 0.1 s (256 = 51 * 5 + 1)
    assert tuner.choose(1.0, _plan(256 * 8, 8)) == 1  # slow steps are not fused


class PredictBatches(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_predict_batch_end(self, batch, logs=None):
        self.rows.append(logs["outputs"].shape[0])


class KerasStop(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True  # Keras's spelling


class AddsKey(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        logs["val_custom"] = float(epoch)


def test_predict_batch_hooks_see_real_rows_and_keras_stop_and_added_keys_work(caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=20).astype(np.int32)
    model = Net()
    trainer = Trainer(model, optax.adam(1e-2))
    seen = PredictBatches()
    for spe in (1, 2):
        seen.rows.clear()
        trainer.steps_per_execution = spe
        trainer.predict(x, batch_size=8, verbose=0, callbacks=[seen])
        assert seen.rows == [8, 8, 4]
    with caplog.at_level("WARNING", logger="trainer"):
        history = trainer.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[KerasStop(), AddsKey()])
    assert history.epoch == [0] and trainer.stop_reason == "callback" and "stop_training" in caplog.text
    assert "stop_training" not in vars(model)
    assert history.history["val_custom"] == [0.0]  # History runs after the user's callbacks


class CtrlCInEvaluate(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ended = False

    def on_test_batch_end(self, batch, logs=None):
        if batch == 0:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)

    def on_test_end(self, logs=None):
        self.ended = True


def test_an_interrupted_evaluate_warns_and_is_not_handed_to_callbacks(caplog):
    import signal

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=32).astype(np.int32)
    trainer = Trainer(Net(), optax.adam(1e-2))
    probe = CtrlCInEvaluate()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with caplog.at_level("WARNING", logger="trainer"):
            partial = trainer.evaluate(x, y, batch_size=8, verbose=0, callbacks=[probe])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert trainer.interrupted and not probe.ended and "interrupted" in caplog.text
    assert set(partial) == {"loss"}


class CountingTrainer(Trainer):
    traces = 0

    def train_step(self, state, batch):
        CountingTrainer.traces += 1
        return super().train_step(state, batch)


def test_attaching_or_removing_callbacks_does_not_recompile():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=32).astype(np.int32)
    for spe in (1, 2):
        CountingTrainer.traces = 0
        trainer = CountingTrainer(Net(), optax.adam(1e-2), steps_per_execution=spe)
        trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        compiled = CountingTrainer.traces
        logs = StepLogs()
        trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[logs, ReadsModel()])
        trainer.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=1)
        assert CountingTrainer.traces == compiled
        assert [b for b, _ in logs.logs] == [0, 1, 2, 3] and all("loss" in entry for _, entry in logs.logs)


class Fails(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("boom")


class WriterThenReader(callbacks.Callback):
    """Writes the model in a hook; a later callback of the same hook reads trainer.model."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.l1.kernel.value = self.model.l1.kernel.value * 0.0


class Reader(callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.seen = np.asarray(self.trainer.model.l1.kernel.value)


def test_on_train_exception_runs_when_fit_dies_and_model_writes_survive_later_reads():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=16).astype(np.int32)
    seen = []
    hook = callbacks.LambdaCallback(on_train_exception=lambda error: seen.append(str(error)))
    trainer = Trainer(Net(), optax.adam(1e-2))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(x, y, batch_size=8, verbose=0, callbacks=[Fails(), hook])
    assert seen == ["boom"]
    reader = Reader()
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[WriterThenReader(), reader])
    assert not reader.seen.any()  # the first callback's write was not overwritten by the read
